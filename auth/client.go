package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/treatment"
)

// Client is a registered SMART Backend Services client: a system allowed to
// ask kapfhir for access tokens.
type Client struct {
	// ID is the client_id: the iss and sub of its assertions.
	ID   string `json:"id"`
	Name string `json:"name"`
	// JWKS is the client's public JSON Web Key Set, inline. Exactly one of
	// JWKS and JWKSURL is set. A key file is read by the caller into JWKS.
	JWKS json.RawMessage `json:"jwks,omitempty"`
	// JWKSURL is where the client publishes its JWKS (https, or http to a
	// loopback address).
	JWKSURL string `json:"jwksUrl,omitempty"`
	// Scopes are the most the client may be granted, e.g. "system/*.rs".
	Scopes []string `json:"scopes"`
	// Role decides what the client may do beyond its scopes.
	Role    Role      `json:"role"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Clients finds registered clients. Client returns a treatment error of kind
// not_found for an unknown id; any other error is a failure of the lookup.
type Clients interface {
	Client(ctx context.Context, id string) (Client, error)
}

// clientIDPattern is the shape of a client id: URL-path safe, 1 to 64 characters.
var clientIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidClientID reports whether id has the shape of a client id.
func ValidClientID(id string) bool { return clientIDPattern.MatchString(id) }

// hasInlineJWKS reports whether c.JWKS holds anything (JSON null does not).
func (c Client) hasInlineJWKS() bool {
	return len(c.JWKS) > 0 && strings.TrimSpace(string(c.JWKS)) != "null"
}

// AllowedScopes parses c.Scopes.
func (c Client) AllowedScopes() ([]Scope, error) {
	return ParseScopes(strings.Join(c.Scopes, " "))
}

// Validate reports every problem with c at once, as a treatment error of kind
// invalid whose fields name the JSON members. Nothing reported echoes a key.
func (c Client) Validate() error {
	var p treatment.Problems
	if !ValidClientID(c.ID) {
		p.Add("id", "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if len(c.Name) > 200 {
		p.Add("name", "must be at most 200 characters")
	}
	hasJWKS := c.hasInlineJWKS()
	switch {
	case hasJWKS && c.JWKSURL != "":
		p.Add("jwks", "set either jwks or jwksUrl, not both")
	case !hasJWKS && c.JWKSURL == "":
		p.Add("jwks", "one of jwks or jwksUrl is required")
	case hasJWKS:
		validateJWKS(&p, c.JWKS)
	default:
		if err := CheckJWKSURL(c.JWKSURL); err != nil {
			p.Add("jwksUrl", err.Error())
		}
	}
	if len(c.Scopes) == 0 {
		p.Add("scopes", "at least one scope is required")
	}
	for i, s := range c.Scopes {
		if _, err := ParseScope(s); err != nil {
			p.Add(fmt.Sprintf("scopes[%d]", i), strings.TrimPrefix(err.Error(), ErrScope.Error()+": "))
		}
	}
	if !c.Role.Valid() {
		p.Addf("role", "must be one of %s", joinRoles())
	}
	return p.Err("client is invalid")
}

func joinRoles() string {
	s := make([]string, len(Roles))
	for i, r := range Roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// validateJWKS adds the problems of an inline JWKS.
func validateJWKS(p *treatment.Problems, data json.RawMessage) {
	if len(data) > maxJWKSBytes {
		p.Addf("jwks", "must be at most %d bytes", maxJWKSBytes)
		return
	}
	keys, problems, err := parseJWKS(data)
	if err != nil {
		p.Add("jwks", err.Error())
		return
	}
	for _, kp := range problems {
		p.Add(fmt.Sprintf("jwks.keys[%d]", kp.Index), kp.Reason)
	}
	if len(keys) == 0 && len(problems) == 0 {
		p.Add("jwks", "must hold at least one signature key usable with RS384 (RSA, 2048 bits or more) or ES384 (EC P-384)")
	}
}

// CheckJWKSURL checks a client's JWKS URL: absolute, https (http only to a
// loopback address), no credentials or fragment, and never a link-local or
// cloud-metadata host.
func CheckJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("must be an absolute https URL")
	}
	if u.User != nil {
		return fmt.Errorf("must not hold credentials")
	}
	if u.Fragment != "" {
		return fmt.Errorf("must not have a fragment")
	}
	host := u.Hostname()
	if err := endpoint.CheckHost(host); err != nil {
		return err
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !endpoint.IsLoopback(host) {
			return fmt.Errorf("must use https (http is allowed only to loopback addresses)")
		}
	default:
		return fmt.Errorf("must use https")
	}
	return nil
}
