//go:build tools

// Package tools records the binary this module builds.
package tools

import _ "github.com/coredns/coredns"
