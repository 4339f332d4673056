package resource

import (
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ValidID reports whether s is a FHIR id: [A-Za-z0-9\-\.]{1,64}.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// PlainText reports whether s is valid UTF-8 without control characters:
// no id, search parameter or search value has them, and PostgreSQL text
// cannot hold NUL or invalid UTF-8.
func PlainText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

// PlainValues reports whether every name and value in vals is PlainText.
func PlainValues(vals url.Values) bool {
	for k, vs := range vals {
		if !PlainText(k) {
			return false
		}
		for _, v := range vs {
			if !PlainText(v) {
				return false
			}
		}
	}
	return true
}
