package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
)

func decodeString(body string, v any) error {
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	req.Header.Set(echo.HeaderContentType, "application/json")
	c := echo.New().NewContext(req, httptest.NewRecorder())
	return decode(c, v)
}

// FuzzDecode feeds arbitrary bodies to the domain decoders: they must return
// a value or a 4xx problem, never panic.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		goodBody,
		`{"programId":"p","instrument":"phq9","items":[1,2,3,0,0,0,0,0,1],"effective":"2026-12-01T09:00:00Z"}`,
		`{"status":"booked","start":"2026-12-01T09:00"}`,
		`{"identifier":[{"system":"x","value":"y","extra":1}],"name":{"given":[1]}}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"a":` + strings.Repeat("[", 100),
		"",
		"null",
		`{"doses":1e400}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, v := range []any{&patientIn{}, &programIn{}, &sessionPatch{}, &planIn{}, &measurementIn{}} {
			err := decodeString(body, v)
			if err == nil {
				continue
			}
			if p := ProblemFor(err); p.Status < 400 || p.Status >= 500 {
				t.Fatalf("decode(%q) = %v, a %d problem; want 4xx", body, err, p.Status)
			}
		}
		var m measurementIn
		if decodeString(body, &m) == nil {
			_, _ = m.toDomain()
		}
	})
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
