package config

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The schema check below exists because the decoders used for the real
// decode report problems without saying where they are: encoding/json's
// "unknown field" names only the last key, and metav1.Duration's
// UnmarshalJSON says `time: unknown unit "x"` with no field at all. Walking
// the document as a generic tree against the Go type, with the JSON path in
// hand, lets every error name the field and its value, and lets us report
// all of them at once instead of the first.

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType        = reflect.TypeFor[metav1.Duration]()
)

// schemaChecker accumulates the problems found while walking a document.
type schemaChecker struct {
	errs []error
}

// checkSchema reports every field of doc that the type of target's
// pointee does not have, and every value that would not decode into its
// field. doc is a generic tree as produced by encoding/json with UseNumber.
func checkSchema(doc any, t reflect.Type) error {
	var c schemaChecker
	c.check("", t, doc)
	return errors.Join(c.errs...)
}

func (c *schemaChecker) add(err *FieldError) {
	c.errs = append(c.errs, err)
}

// check verifies that v would decode into a value of type t. It follows
// encoding/json's rules (which sigs.k8s.io/yaml uses), except that keys
// must match case exactly, as they must for kube-proxy's own strict
// decoder.
func (c *schemaChecker) check(path string, t reflect.Type, v any) {
	if t.Kind() == reflect.Pointer {
		if v == nil {
			return // null leaves a pointer nil
		}
		c.check(path, t.Elem(), v)
		return
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) {
		c.checkUnmarshaler(path, t, v)
		return
	}
	if v == nil {
		return // null is a no-op for plain values, maps and slices
	}
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		c.checkTextUnmarshaler(path, t, v)
		return
	}
	c.checkKind(path, t, v)
}

// checkKind dispatches on the kind of a type without custom decoding.
func (c *schemaChecker) checkKind(path string, t reflect.Type, v any) {
	switch t.Kind() {
	case reflect.Struct:
		c.checkStruct(path, t, v)
	case reflect.Map:
		c.checkMap(path, t, v)
	case reflect.Slice, reflect.Array:
		c.checkSlice(path, t, v)
	case reflect.String:
		c.expect(path, v, isString, "a string")
	case reflect.Bool:
		c.expect(path, v, isBool, "a boolean (true or false)")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		c.checkInt(path, t, v)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		c.checkUint(path, t, v)
	case reflect.Float32, reflect.Float64:
		c.checkFloat(path, t, v)
	case reflect.Interface:
		// Anything decodes into an interface.
	default:
		c.add(fieldErr(path, ReasonInvalidType, v, fmt.Sprintf("field of Go type %s cannot be set from a file", t)))
	}
}

func isString(v any) bool { _, ok := v.(string); return ok }
func isBool(v any) bool   { _, ok := v.(bool); return ok }

// expect reports a type error unless ok(v).
func (c *schemaChecker) expect(path string, v any, ok func(any) bool, want string) {
	if !ok(v) {
		c.typeErr(path, v, want)
	}
}

// typeErr reports that v is not of the wanted JSON type.
func (c *schemaChecker) typeErr(path string, v any, want string) {
	c.add(fieldErr(path, ReasonInvalidType, v, fmt.Sprintf("expected %s, got %s", want, jsonKind(v))))
}

// jsonKind names the JSON type of a generic value, for "expected X, got Y".
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// checkStruct walks an object against a struct's JSON fields.
func (c *schemaChecker) checkStruct(path string, t reflect.Type, v any) {
	obj, ok := v.(map[string]any)
	if !ok {
		c.typeErr(path, v, "an object")
		return
	}
	fields := jsonFields(t)
	for _, key := range sortedKeys(obj) {
		ft, ok := fields[key]
		if !ok {
			c.add(unknownField(child(path, key), key, fields))
			continue
		}
		c.check(child(path, key), ft, obj[key])
	}
}

// unknownField reports key as unknown, suggesting the field it most likely
// meant when the only difference is letter case (a common hand-edit slip
// that encoding/json would silently accept but kube-proxy rejects).
func unknownField(path, key string, fields map[string]reflect.Type) *FieldError {
	e := &FieldError{Path: path, Reason: ReasonUnknownField}
	for name := range fields {
		if strings.EqualFold(name, key) {
			e.Detail = fmt.Sprintf("did you mean %q?", name)
			break
		}
	}
	return e
}

// checkMap walks an object whose keys are free-form (e.g. featureGates).
func (c *schemaChecker) checkMap(path string, t reflect.Type, v any) {
	obj, ok := v.(map[string]any)
	if !ok {
		c.typeErr(path, v, "an object")
		return
	}
	for _, key := range sortedKeys(obj) {
		c.check(child(path, key), t.Elem(), obj[key])
	}
}

// checkSlice walks a list element by element.
func (c *schemaChecker) checkSlice(path string, t reflect.Type, v any) {
	list, ok := v.([]any)
	if !ok {
		c.typeErr(path, v, "a list")
		return
	}
	for i, elem := range list {
		c.check(index(path, i), t.Elem(), elem)
	}
}

// checkInt accepts a whole number that fits t.
func (c *schemaChecker) checkInt(path string, t reflect.Type, v any) {
	n, ok := v.(json.Number)
	if !ok {
		c.typeErr(path, v, "an integer")
		return
	}
	if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
		c.add(fieldErr(path, ReasonInvalidValue, n, intProblem(err, t)))
	}
}

// checkUint accepts a non-negative whole number that fits t.
func (c *schemaChecker) checkUint(path string, t reflect.Type, v any) {
	n, ok := v.(json.Number)
	if !ok {
		c.typeErr(path, v, "a non-negative integer")
		return
	}
	if _, err := strconv.ParseUint(string(n), 10, t.Bits()); err != nil {
		c.add(fieldErr(path, ReasonInvalidValue, n, intProblem(err, t)))
	}
}

// intProblem explains why a number did not parse as an integer of type t.
func intProblem(err error, t reflect.Type) string {
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Sprintf("out of range for %s", t.Kind())
	}
	return fmt.Sprintf("expected a whole number (%s)", t.Kind())
}

// checkFloat accepts a number that fits t.
func (c *schemaChecker) checkFloat(path string, t reflect.Type, v any) {
	n, ok := v.(json.Number)
	if !ok {
		c.typeErr(path, v, "a number")
		return
	}
	f, err := strconv.ParseFloat(string(n), t.Bits())
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		c.add(fieldErr(path, ReasonInvalidValue, n, fmt.Sprintf("out of range for %s", t.Kind())))
	}
}

// checkUnmarshaler runs the type's own UnmarshalJSON on the value, exactly
// as the real decode will, so that what it rejects is reported here with a
// path. Durations get their own reason and a hint at the expected syntax.
func (c *schemaChecker) checkUnmarshaler(path string, t reflect.Type, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		c.add(fieldErr(path, ReasonInvalidValue, v, err.Error()))
		return
	}
	target := reflect.New(t).Interface().(json.Unmarshaler)
	if err := target.UnmarshalJSON(raw); err != nil {
		c.add(unmarshalProblem(path, t, v, err))
	}
}

// unmarshalProblem builds the error for a value a type's UnmarshalJSON
// refused.
func unmarshalProblem(path string, t reflect.Type, v any, err error) *FieldError {
	if t == durationType {
		if _, ok := v.(string); !ok {
			return fieldErr(path, ReasonInvalidDuration, v,
				fmt.Sprintf(`expected a duration string such as "30s" or "1m30s", got %s`, jsonKind(v)))
		}
		return fieldErr(path, ReasonInvalidDuration, v,
			fmt.Sprintf(`%v (use e.g. "30s", "1m30s", "2h")`, err))
	}
	return fieldErr(path, ReasonInvalidValue, v, err.Error())
}

// checkTextUnmarshaler mirrors encoding/json: such types take a string and
// parse it with UnmarshalText.
func (c *schemaChecker) checkTextUnmarshaler(path string, t reflect.Type, v any) {
	s, ok := v.(string)
	if !ok {
		c.typeErr(path, v, "a string")
		return
	}
	target := reflect.New(t).Interface().(encoding.TextUnmarshaler)
	if err := target.UnmarshalText([]byte(s)); err != nil {
		c.add(fieldErr(path, ReasonInvalidValue, s, err.Error()))
	}
}

// jsonFields maps the JSON names of t's fields to their types, inlining
// embedded structs without a JSON name (metav1.TypeMeta and friends), as
// encoding/json does.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	addJSONFields(t, fields)
	return fields
}

func addJSONFields(t reflect.Type, fields map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" && f.Anonymous {
			if et := derefType(f.Type); et.Kind() == reflect.Struct {
				addJSONFields(et, fields)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, dup := fields[name]; !dup {
			fields[name] = f.Type
		}
	}
}

func derefType(t reflect.Type) reflect.Type {
	if t.Kind() == reflect.Pointer {
		return t.Elem()
	}
	return t
}

// sortedKeys returns obj's keys in order so that errors come out in a
// stable order from run to run.
func sortedKeys(obj map[string]any) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
