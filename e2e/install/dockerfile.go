package install

import (
	"fmt"
	"strings"
)

// Instruction is one Dockerfile instruction with its continuation lines
// joined.
type Instruction struct {
	Line int    // line number of its first line
	Cmd  string // upper case: FROM, RUN, COPY, ...
	Args string
}

// Stage is one FROM and the instructions up to the next FROM.
type Stage struct {
	Base, Name   string
	Instructions []Instruction
}

// ParseDockerfile splits a Dockerfile into stages. It understands what
// BuildKit's parser does for the default escape character: comment lines
// and empty lines (also inside a continued instruction), parser directives, backslash line
// continuations and `FROM image [AS name]`. Heredocs are not supported and
// reported as an error rather than misread.
func ParseDockerfile(text string) ([]Stage, error) {
	var ins []Instruction
	var cur *Instruction
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" {
			continue // BuildKit skips these inside a continuation too
		}
		cont := strings.HasSuffix(trimmed, "\\")
		body := strings.TrimSpace(strings.TrimSuffix(trimmed, "\\"))
		if cur == nil {
			cmd, args, _ := strings.Cut(body, " ")
			cur = &Instruction{Line: n, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)}
		} else if body != "" {
			cur.Args = strings.TrimSpace(cur.Args + " " + body)
		}
		if strings.Contains(cur.Args, "<<") && (cur.Cmd == "RUN" || cur.Cmd == "COPY") {
			return nil, fmt.Errorf("line %d: heredocs are not supported by this parser", cur.Line)
		}
		if !cont {
			ins = append(ins, *cur)
			cur = nil
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("line %d: %s continues past the end of the file", cur.Line, cur.Cmd)
	}
	var stages []Stage
	for _, in := range ins {
		switch {
		case in.Cmd == "FROM":
			f := strings.Fields(in.Args)
			var st Stage
			for len(f) > 0 && strings.HasPrefix(f[0], "--") { // --platform=...
				f = f[1:]
			}
			switch {
			case len(f) == 1:
				st.Base = f[0]
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				st.Base, st.Name = f[0], f[2]
			default:
				return nil, fmt.Errorf("line %d: FROM %s: want `FROM image [AS name]`", in.Line, in.Args)
			}
			stages = append(stages, st)
		case len(stages) == 0:
			if in.Cmd != "ARG" {
				return nil, fmt.Errorf("line %d: %s before the first FROM", in.Line, in.Cmd)
			}
		default:
			s := &stages[len(stages)-1]
			s.Instructions = append(s.Instructions, in)
		}
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM instruction")
	}
	return stages, nil
}

// Find returns the stage's instructions with the given command.
func (s Stage) Find(cmd string) []Instruction {
	var out []Instruction
	for _, in := range s.Instructions {
		if in.Cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}
