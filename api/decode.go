package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"sort"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/treatment"
)

// maxDepth bounds JSON nesting in request bodies.
const maxDepth = 16

// decode reads a JSON request body into v (a pointer to a struct), rejecting a
// wrong content type (415), an oversized body (413), invalid JSON, nesting
// deeper than maxDepth, unknown fields (all of them, by path) and wrongly
// typed values (400).
func decode(c echo.Context, v any) error {
	req := c.Request()
	mt, _, err := mime.ParseMediaType(req.Header.Get(echo.HeaderContentType))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return &requestError{status: http.StatusUnsupportedMediaType, msg: "the body must be application/json"}
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", mbe.Limit))
		}
		return badRequest("the body could not be read")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("the body is empty: a JSON object is required")
	}
	// Refuse deep nesting before anything is built from the body.
	if nestsDeeper(body, maxDepth) {
		return badRequest(fmt.Sprintf("the body nests deeper than %d levels", maxDepth))
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return badRequest("the body holds more than one JSON value")
	}
	if _, ok := generic.(map[string]any); !ok {
		return badRequest("the body must be a JSON object")
	}
	if unknown := unknownFields(generic, reflect.TypeOf(v).Elem(), ""); len(unknown) > 0 {
		fields := make([]treatment.FieldError, len(unknown))
		for i, f := range unknown {
			fields[i] = treatment.FieldError{Field: f, Reason: "unknown field"}
		}
		return badRequest("the body has unknown fields", fields...)
	}
	strict := json.NewDecoder(bytes.NewReader(body))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return jsonError(err)
	}
	return nil
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return badRequest(fmt.Sprintf("the body is not valid JSON (at byte %d)", se.Offset))
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "(body)"
		}
		return badRequest("a field has the wrong type", treatment.FieldError{Field: field, Reason: "must be " + jsonType(te.Type)})
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("the body is truncated JSON")
	}
	return badRequest("the body is not valid JSON")
}

func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Pointer:
		return jsonType(t.Elem())
	}
	return t.String()
}

// nestsDeeper reports whether the JSON text b opens more than limit objects
// and arrays inside one another. It only counts brackets outside strings, so
// it runs before (and whatever) the decoder would build, in one pass and
// constant memory; for valid JSON it measures what the decoder would build.
func nestsDeeper(b []byte, limit int) bool {
	depth := 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			if depth > limit {
				return true
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return false
}

// unknownFields lists the paths of JSON object keys that t has no field for.
func unknownFields(v any, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	switch x := v.(type) {
	case map[string]any:
		if t.Kind() != reflect.Struct {
			return nil
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := k
			if p == "" {
				p = `""` // an empty key, named visibly
			}
			if path != "" {
				p = path + "." + p
			}
			ft, ok := fields[k]
			if !ok {
				out = append(out, p)
				continue
			}
			out = append(out, unknownFields(x[k], ft, p)...)
		}
	case []any:
		if t.Kind() != reflect.Slice {
			return nil
		}
		for i, e := range x {
			out = append(out, unknownFields(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return out
}

func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}
