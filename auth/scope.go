package auth

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Perms is a set of SMART v2 permissions: create, read, update, delete, search.
type Perms uint8

// The permissions, in the order SMART v2 writes them ("cruds").
const (
	PermCreate Perms = 1 << iota // c
	PermRead                     // r
	PermUpdate                   // u
	PermDelete                   // d
	PermSearch                   // s

	PermAll = PermCreate | PermRead | PermUpdate | PermDelete | PermSearch
)

// permLetters lists the permission letters in their required order.
var permLetters = [...]struct {
	letter byte
	perm   Perms
}{{'c', PermCreate}, {'r', PermRead}, {'u', PermUpdate}, {'d', PermDelete}, {'s', PermSearch}}

// String renders p in SMART v2 form, e.g. "rs"; "" for none.
func (p Perms) String() string {
	var b strings.Builder
	for _, l := range permLetters {
		if p&l.perm != 0 {
			b.WriteByte(l.letter)
		}
	}
	return b.String()
}

// AnyType is the Scope.Type that stands for every resource type.
const AnyType = "*"

// Scope is one system-level SMART scope: the permissions p on the resource
// type Type ("*" for all). SMART v1 and v2 spellings parse to the same Scope.
type Scope struct {
	Type  string
	Perms Perms
}

// String renders s in SMART v2 form, e.g. "system/CarePlan.rs".
func (s Scope) String() string { return "system/" + s.Type + "." + s.Perms.String() }

// ErrScope is wrapped by every error ParseScope and ParseScopes return.
var ErrScope = errors.New("invalid scope")

// maxScopeLen bounds one scope token, so that a hostile request cannot make
// errors or work large.
const maxScopeLen = 128

// ParseScope parses one scope: "system/<Type|*>.<perms>" where perms is a
// non-empty subsequence of "cruds" (v2) or one of "read", "write", "*" (v1).
// Only the system/ context is accepted: patient/ and user/ scopes need a user
// or a launch context, which backend services do not have. Granular v2 scopes
// (with "?param=value") are not supported.
func ParseScope(s string) (Scope, error) {
	if len(s) > maxScopeLen {
		return Scope{}, fmt.Errorf("%w: a scope is longer than %d characters", ErrScope, maxScopeLen)
	}
	ctx, rest, ok := strings.Cut(s, "/")
	if !ok {
		return Scope{}, fmt.Errorf("%w: %q is not a system/ scope", ErrScope, s)
	}
	switch ctx {
	case "system":
	case "patient", "user":
		return Scope{}, fmt.Errorf("%w: %q: %s/ scopes are not available to backend services: use system/", ErrScope, s, ctx)
	default:
		return Scope{}, fmt.Errorf("%w: %q is not a system/ scope", ErrScope, s)
	}
	if strings.Contains(rest, "?") {
		return Scope{}, fmt.Errorf("%w: %q: granular scopes (with ?) are not supported", ErrScope, s)
	}
	typ, perms, ok := strings.Cut(rest, ".")
	if !ok {
		return Scope{}, fmt.Errorf("%w: %q has no permissions (expected system/Type.rs)", ErrScope, s)
	}
	if typ != AnyType && !isResourceType(typ) {
		return Scope{}, fmt.Errorf("%w: %q: resource type must be * or a FHIR resource type name", ErrScope, s)
	}
	p, err := parsePerms(perms)
	if err != nil {
		return Scope{}, fmt.Errorf("%w: %q: %v", ErrScope, s, err)
	}
	return Scope{Type: typ, Perms: p}, nil
}

// parsePerms parses the part after the dot.
func parsePerms(s string) (Perms, error) {
	switch s {
	case "read": // SMART v1
		return PermRead | PermSearch, nil
	case "write":
		return PermCreate | PermUpdate | PermDelete, nil
	case "*":
		return PermAll, nil
	case "":
		return 0, errors.New("permissions are empty")
	}
	var p Perms
	next := 0 // index into permLetters: letters must come in "cruds" order, once each
	for i := 0; i < len(s); i++ {
		found := false
		for next < len(permLetters) {
			l := permLetters[next]
			next++
			if l.letter == s[i] {
				p |= l.perm
				found = true
				break
			}
		}
		if !found {
			return 0, errors.New("permissions must be a subset of c, r, u, d, s in that order, or read, write or *")
		}
	}
	return p, nil
}

// isResourceType reports whether s has the shape of a FHIR resource type
// name: an upper-case ASCII letter followed by ASCII letters.
func isResourceType(s string) bool {
	if s == "" || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

// ParseScopes parses a space-separated scope string (the OAuth "scope"
// parameter) and returns the scopes normalised (see Normalize). Every scope
// must parse; the error names the first that does not and wraps ErrScope.
func ParseScopes(s string) ([]Scope, error) {
	fields := strings.Fields(s)
	if len(fields) > 100 {
		return nil, fmt.Errorf("%w: more than 100 scopes", ErrScope)
	}
	out := make([]Scope, 0, len(fields))
	for _, f := range fields {
		sc, err := ParseScope(f)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
	}
	return Normalize(out), nil
}

// FormatScopes renders scopes in SMART v2 form, space separated.
func FormatScopes(scopes []Scope) string {
	parts := make([]string, len(scopes))
	for i, s := range scopes {
		parts[i] = s.String()
	}
	return strings.Join(parts, " ")
}

// Normalize merges the scopes of one type, drops permissions already granted
// by a system/* scope, drops empty scopes and sorts the result ("*" first,
// then by type), so equal grants have equal forms.
func Normalize(scopes []Scope) []Scope {
	byType := map[string]Perms{}
	for _, s := range scopes {
		byType[s.Type] |= s.Perms
	}
	all := byType[AnyType]
	out := make([]Scope, 0, len(byType))
	for t, p := range byType {
		if t != AnyType {
			p &^= all
		}
		if p != 0 {
			out = append(out, Scope{Type: t, Perms: p})
		}
	}
	// "*" sorts before every resource type name (they start with a letter).
	slices.SortFunc(out, func(a, b Scope) int { return cmp.Compare(a.Type, b.Type) })
	return out
}

// Narrow returns the part of requested that allowed grants: for each pair, the
// narrower of the two types and the intersection of the permissions.
// Requested system/*.cruds with allowed system/*.rs gives system/*.rs;
// requested system/CarePlan.r with allowed system/*.rs gives system/CarePlan.r.
// The result is normalised; it is empty when nothing is granted.
func Narrow(requested, allowed []Scope) []Scope {
	var out []Scope
	for _, r := range requested {
		for _, a := range allowed {
			var t string
			switch {
			case r.Type == a.Type:
				t = r.Type
			case r.Type == AnyType:
				t = a.Type
			case a.Type == AnyType:
				t = r.Type
			default:
				continue
			}
			if p := r.Perms & a.Perms; p != 0 {
				out = append(out, Scope{Type: t, Perms: p})
			}
		}
	}
	return Normalize(out)
}

// Allows reports whether scopes grant every permission in p on resourceType.
func Allows(scopes []Scope, resourceType string, p Perms) bool {
	if p == 0 {
		return false
	}
	var have Perms
	for _, s := range scopes {
		if s.Type == AnyType || s.Type == resourceType {
			have |= s.Perms
		}
	}
	return have&p == p
}
