package config

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Reason says what kind of problem a FieldError reports. It is part of the
// message so that an operator can tell a typo (unknown field) from a value
// that parsed but is out of range (invalid value).
type Reason string

// The reasons a field can be rejected.
const (
	ReasonUnknownField     Reason = "unknown field"
	ReasonInvalidType      Reason = "invalid type"
	ReasonInvalidDuration  Reason = "invalid duration"
	ReasonInvalidValue     Reason = "invalid value"
	ReasonUnsupportedValue Reason = "unsupported value"
	ReasonRequiredValue    Reason = "required value"
	ReasonDuplicateValue   Reason = "duplicate value"
)

// FieldError is one problem with one field of a configuration. Path is the
// field's JSON path as written in the file (e.g. "iptables.syncPeriod" or
// "nodePortAddresses[1]") rather than the Go field name, because the person
// reading the error edits YAML, not Go.
type FieldError struct {
	Path   string
	Reason Reason
	// Value is the offending value, already rendered for display (strings
	// are quoted); empty when there is nothing to show.
	Value  string
	Detail string
}

// Error renders the problem as "path: reason value: detail", or as
// `unknown field "path"` for a field the schema does not have.
func (e *FieldError) Error() string {
	if e.Reason == ReasonUnknownField {
		msg := fmt.Sprintf("unknown field %q", e.Path)
		if e.Detail != "" {
			msg += ": " + e.Detail
		}
		return msg
	}
	var b strings.Builder
	b.WriteString(e.Path)
	b.WriteString(": ")
	b.WriteString(string(e.Reason))
	if e.Value != "" {
		b.WriteString(" ")
		b.WriteString(e.Value)
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

// fieldErr builds a FieldError, rendering v for display.
func fieldErr(path string, reason Reason, v any, detail string) *FieldError {
	return &FieldError{Path: path, Reason: reason, Value: render(v), Detail: detail}
}

// maxRendered bounds how much of a value an error repeats, so that a list
// or object pasted in the wrong place does not flood the log.
const maxRendered = 80

// render formats a value the way it would look in JSON: strings quoted,
// numbers and booleans bare, objects and lists compact.
func render(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = fmt.Sprintf("%q", x)
	case json.Number:
		s = string(x)
	case nil:
		s = "null"
	case bool, int, int32, int64, float32, float64:
		s = fmt.Sprint(x)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			s = fmt.Sprint(x)
		} else {
			s = string(b)
		}
	}
	if len(s) > maxRendered {
		s = s[:maxRendered] + "..."
	}
	return s
}

// child returns the JSON path of field name under path.
func child(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// index returns the JSON path of element i of the list at path.
func index(path string, i int) string {
	return fmt.Sprintf("%s[%d]", path, i)
}
