package config

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/kapfhir/kapfhir/auth"
)

// Auth configures kapfhir's own authorization server.
type Auth struct {
	// TokenLifetime of the access tokens kapfhir issues (default 5m, at most 1h).
	TokenLifetime time.Duration `yaml:"tokenLifetime"`
	// RatePerSecond and RateBurst limit each client's requests (0: no limit).
	RatePerSecond float64 `yaml:"ratePerSecond"`
	RateBurst     int     `yaml:"rateBurst"`
	// Clients are registered at start (more through the admin API).
	Clients []Client `yaml:"clients,omitempty"`
}

// Client is an API client in the configuration file: auth.Client with its
// JWKS inline (jwks, as JSON text), in a file (jwksFile) or at a URL.
type Client struct {
	ID       string   `yaml:"id"`
	Name     string   `yaml:"name"`
	JWKS     string   `yaml:"jwks"`
	JWKSFile string   `yaml:"jwksFile"`
	JWKSURL  string   `yaml:"jwksUrl"`
	Scopes   []string `yaml:"scopes"`
	Role     string   `yaml:"role"`
}

// Resolve reads the client's JWKS file and returns the auth.Client.
func (c Client) Resolve() (auth.Client, error) {
	ac := auth.Client{ID: c.ID, Name: c.Name, JWKSURL: c.JWKSURL, Scopes: c.Scopes, Role: auth.Role(c.Role)}
	switch {
	case c.JWKSFile != "" && c.JWKS != "":
		return ac, fmt.Errorf("client %s: set one of jwks and jwksFile", c.ID)
	case c.JWKSFile != "":
		b, err := os.ReadFile(c.JWKSFile)
		if err != nil {
			return ac, fmt.Errorf("client %s: jwksFile: %w", c.ID, err)
		}
		ac.JWKS = json.RawMessage(b)
	case c.JWKS != "":
		ac.JWKS = json.RawMessage(c.JWKS)
	}
	return ac, nil
}

// validate reports each client's problems under auth.clients[i].
func (a Auth) validate(p *Problems) {
	if a.TokenLifetime < 0 || a.TokenLifetime > time.Hour {
		p.add("auth.tokenLifetime", "must be between 0 (default 5m) and 1h")
	}
	if a.RatePerSecond < 0 || a.RateBurst < 0 {
		p.add("auth.ratePerSecond", "must not be negative")
	}
	seen := map[string]bool{}
	for i, c := range a.Clients {
		key := fmt.Sprintf("auth.clients[%d]", i)
		if seen[c.ID] {
			p.add(key+".id", "%q is defined twice", c.ID)
		}
		seen[c.ID] = true
		ac, err := c.Resolve()
		if err != nil {
			p.add(key, "%s", err.Error())
			continue
		}
		p.addFields(key+".", "id", ac.Validate())
	}
}
