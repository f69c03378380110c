package install

import (
	"fmt"
	"strings"
)

// Unit is a parsed systemd unit file: section -> key -> values in file
// order (a key may repeat, e.g. After=).
type Unit map[string]map[string][]string

// ParseUnit reads the unit file syntax systemd uses: [Section] headers,
// Key=Value lines, # and ; comments, backslash line continuations.
func ParseUnit(text string) (Unit, error) {
	u := Unit{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSpace(strings.TrimSuffix(line, "\\")) + " " + strings.TrimSpace(lines[i])
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", n, line)
			}
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("line %d: want Key=Value, got %q", n, line)
			}
			if section == "" {
				return nil, fmt.Errorf("line %d: %s outside a section", n, k)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u, nil
}

// Get returns the last value of section.key (the one systemd uses for
// single-valued settings) and whether it is set.
func (u Unit) Get(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}
