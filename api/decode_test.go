package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"
)

func decodeString(body string, v any) error {
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	req.Header.Set(echo.HeaderContentType, "application/json")
	c := echo.New().NewContext(req, httptest.NewRecorder())
	return decode(c, v)
}

const goodBody = `{"identifier":[{"system":"https://x","value":"1"}],"name":{"family":"F","given":["G"]},"birthDate":"1980-01-01","gender":"male"}`

func TestDecodeListsEveryUnknownField(t *testing.T) {
	var in patientIn
	err := decodeString(`{"zeta":1,"name":{"family":"F","nick":"x"},"identifier":[{"system":"s","value":"v"},{"use":"u"}],"alpha":2}`, &in)
	p := ProblemFor(err)
	var got []string
	for _, f := range p.Errors {
		got = append(got, f.Field)
	}
	want := "alpha identifier[1].use name.nick zeta"
	if p.Status != 400 || strings.Join(got, " ") != want {
		t.Errorf("problem = %+v, want 400 naming %s", p, want)
	}
}

func TestDecodeNestingLimit(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	const tooDeep = "the body nests deeper than 16 levels"
	tests := []struct {
		name string
		body string
		want string // the problem's detail
	}{
		// {} is one level: an unknown field holding 15 nested arrays is 16.
		{"at the limit", `{"x":` + nest(15) + `}`, "the body has unknown fields"},
		{"one past the limit", `{"x":` + nest(16) + `}`, tooDeep},
		{"objects", strings.Repeat(`{"a":`, 17) + "1" + strings.Repeat("}", 17), tooDeep},
		{"far past the limit", `{"x":` + nest(100000) + `}`, tooDeep},
		{"unclosed", `{"x":` + strings.Repeat("[", 5000), tooDeep},
		{"not the first field", `{"gender":"male","x":` + nest(16) + `}`, tooDeep},
		{"top-level array", nest(17), tooDeep},
		{"brackets inside strings do not count", `{"gender":"` + strings.Repeat("[{", 100) + `"}`, ""},
		{"escaped quotes inside strings", `{"gender":"\\\"` + strings.Repeat("[", 100) + `"}`, ""},
		{"unicode escape of a quote", `{"gender":"\u0022` + strings.Repeat("[", 100) + `"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in patientIn
			err := decodeString(tt.body, &in)
			got := ""
			if err != nil {
				p := ProblemFor(err)
				if p.Status != 400 {
					t.Errorf("status = %d, want 400", p.Status)
				}
				got = p.Detail
			}
			if got != tt.want {
				t.Errorf("decode detail = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNestsDeeper(t *testing.T) {
	// For valid JSON, nestsDeeper agrees with the depth of what the decoder builds.
	for _, s := range []string{
		`1`, `"["`, `[]`, `{}`, `[[],[[]]]`, `{"a":[{"b":{}}],"c":"]]]]"}`, `["\"", ["\\"]]`,
		`{"a\"[":[1,{"b":[[["x"]]]}]}`,
	} {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("bad test JSON %s: %v", s, err)
		}
		d := treeDepth(v)
		if nestsDeeper([]byte(s), d) || (d > 0 && !nestsDeeper([]byte(s), d-1)) {
			t.Errorf("nestsDeeper(%s) disagrees with its depth %d", s, d)
		}
	}
}

// treeDepth is the nesting depth of a decoded JSON value.
func treeDepth(v any) int {
	d := 0
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			d = max(d, treeDepth(e))
		}
		return d + 1
	case []any:
		for _, e := range x {
			d = max(d, treeDepth(e))
		}
		return d + 1
	}
	return 0
}

func TestDecodeNamesAnEmptyKey(t *testing.T) {
	var in patientIn
	p := ProblemFor(decodeString(`{"":1,"name":{"":2}}`, &in))
	var got []string
	for _, f := range p.Errors {
		got = append(got, f.Field)
	}
	if diff := cmp.Diff([]string{`""`, `name.""`}, got); diff != "" {
		t.Errorf("unknown fields (-want +got):\n%s", diff)
	}
}
