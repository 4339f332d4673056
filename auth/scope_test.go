package auth

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const rs = PermRead | PermSearch

func TestParseScopes(t *testing.T) {
	tests := []struct {
		in      string
		want    []Scope
		wantErr string
	}{
		{in: "system/CarePlan.rs", want: []Scope{{"CarePlan", rs}}},
		{in: "system/*.rs", want: []Scope{{"*", rs}}},
		{in: "system/*.cruds", want: []Scope{{"*", PermAll}}},
		{in: "system/Observation.c", want: []Scope{{"Observation", PermCreate}}},
		{in: "system/Observation.cd", want: []Scope{{"Observation", PermCreate | PermDelete}}},
		{in: "system/*.read", want: []Scope{{"*", rs}}},
		{in: "system/*.write", want: []Scope{{"*", PermCreate | PermUpdate | PermDelete}}},
		{in: "system/Patient.*", want: []Scope{{"Patient", PermAll}}},
		{in: "system/*.*", want: []Scope{{"*", PermAll}}},
		{in: "", want: []Scope{}},
		{in: "  system/Patient.r\tsystem/Patient.s  ", want: []Scope{{"Patient", rs}}},
		{in: "system/Patient.rs system/*.r", want: []Scope{{"*", PermRead}, {"Patient", PermSearch}}},
		{in: "system/Patient.r system/*.rs", want: []Scope{{"*", rs}}},
		{in: "system/Observation.rs system/CarePlan.rs", want: []Scope{{"CarePlan", rs}, {"Observation", rs}}},
		{in: "patient/*.rs", wantErr: "patient/ scopes are not available to backend services"},
		{in: "user/Patient.read", wantErr: "user/ scopes are not available"},
		{in: "system/*.sr", wantErr: "in that order"},
		{in: "system/*.rr", wantErr: "in that order"},
		{in: "system/*.x", wantErr: "in that order"},
		{in: "system/*.", wantErr: "permissions are empty"},
		{in: "system/*", wantErr: "has no permissions"},
		{in: "system/patient.rs", wantErr: "resource type must be"},
		{in: "system/Pat1ent.rs", wantErr: "resource type must be"},
		{in: "system/.rs", wantErr: "resource type must be"},
		{in: "system/Observation.rs?category=laboratory", wantErr: "granular scopes"},
		{in: "openid", wantErr: "is not a system/ scope"},
		{in: "launch/patient", wantErr: "is not a system/ scope"},
		{in: "offline_access", wantErr: "is not a system/ scope"},
		{in: "system/*.rs " + strings.Repeat("a", 200), wantErr: "longer than 128"},
		{in: strings.Repeat("system/*.r ", 101), wantErr: "more than 100 scopes"},
	}
	for _, tt := range tests {
		got, err := ParseScopes(tt.in)
		if tt.wantErr != "" {
			if err == nil || !errors.Is(err, ErrScope) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseScopes(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseScopes(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseScopes(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestScopeString(t *testing.T) {
	tests := map[string]Scope{
		"system/*.cruds":    {"*", PermAll},
		"system/*.rs":       {"*", rs},
		"system/CarePlan.r": {"CarePlan", PermRead},
		"system/Goal.cud":   {"Goal", PermCreate | PermUpdate | PermDelete},
	}
	for want, s := range tests {
		if got := s.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", s, got, want)
		}
	}
	if got := FormatScopes([]Scope{{"*", rs}, {"Goal", PermCreate}}); got != "system/*.rs system/Goal.c" {
		t.Errorf("FormatScopes = %q", got)
	}
}

func TestNarrow(t *testing.T) {
	tests := []struct {
		name               string
		requested, allowed string
		want               []Scope
	}{
		{"wildcard narrowed in perms", "system/*.cruds", "system/*.rs", []Scope{{"*", rs}}},
		{"type within wildcard", "system/CarePlan.r", "system/*.rs", []Scope{{"CarePlan", PermRead}}},
		{"wildcard narrowed to allowed types", "system/*.read", "system/Observation.rs system/Goal.r", []Scope{{"Goal", PermRead}, {"Observation", rs}}},
		{"v1 write against read-only", "system/*.write", "system/*.rs", []Scope{}},
		{"other type", "system/Patient.rs", "system/Observation.rs", []Scope{}},
		{"partial", "system/Patient.rs system/AuditEvent.rs", "system/Patient.r", []Scope{{"Patient", PermRead}}},
		{"nothing requested", "", "system/*.rs", []Scope{}},
		{"nothing allowed", "system/*.rs", "", []Scope{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ParseScopes(tt.requested)
			if err != nil {
				t.Fatal(err)
			}
			allowed, err := ParseScopes(tt.allowed)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, Narrow(req, allowed)); diff != "" {
				t.Errorf("Narrow (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllows(t *testing.T) {
	scopes := []Scope{{"*", PermRead}, {"Observation", PermSearch | PermCreate}}
	tests := []struct {
		typ  string
		p    Perms
		want bool
	}{
		{"Patient", PermRead, true},
		{"Patient", PermSearch, false},
		{"Observation", PermRead | PermSearch, true},
		{"Observation", PermCreate, true},
		{"Observation", PermUpdate, false},
		{"Patient", PermRead | PermSearch, false},
		{"Patient", 0, false},
	}
	for _, tt := range tests {
		if got := Allows(scopes, tt.typ, tt.p); got != tt.want {
			t.Errorf("Allows(%s, %s) = %v, want %v", tt.typ, tt.p, got, tt.want)
		}
	}
	if Allows(nil, "Patient", PermRead) {
		t.Error("no scopes allow a read")
	}
}

// FuzzParseScopes checks that parsing never panics and that what parses is
// in normal form, renders to a string that parses back to the same scopes,
// and narrows to itself.
func FuzzParseScopes(f *testing.F) {
	for _, s := range []string{"system/*.rs", "system/Patient.read system/*.write", "patient/*.rs", "system/*.sr", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseScopes(s)
		if err != nil {
			if !errors.Is(err, ErrScope) {
				t.Fatalf("error %v does not wrap ErrScope", err)
			}
			return
		}
		again, err := ParseScopes(FormatScopes(got))
		if err != nil {
			t.Fatalf("rendered scopes %q do not parse: %v", FormatScopes(got), err)
		}
		if diff := cmp.Diff(got, again); diff != "" {
			t.Fatalf("round trip (-first +again):\n%s", diff)
		}
		if diff := cmp.Diff(got, Normalize(got)); diff != "" {
			t.Fatalf("not normalised (-got +normalised):\n%s", diff)
		}
		if diff := cmp.Diff(got, Narrow(got, got)); diff != "" {
			t.Fatalf("Narrow(s, s) != s (-s +narrowed):\n%s", diff)
		}
		for _, sc := range got {
			if sc.Perms == 0 || sc.Perms&^PermAll != 0 {
				t.Fatalf("scope %+v has bad permissions", sc)
			}
			if !Allows(got, sc.Type, sc.Perms) {
				t.Fatalf("scopes do not allow their own %s", sc)
			}
		}
	})
}
