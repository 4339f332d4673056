package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/kapfhir/kapfhir/auth"
)

// Every request the tests make carries a bearer token obtained the way a
// real client obtains one: the bootstrap admin's through `kapfhir token`
// (the key kapfhir wrote to its data directory on first start), the other
// roles' by registering e2e clients through the admin API and signing
// SMART Backend Services assertions to POST /auth/token.

// login gets a token for every role.
func (in *instance) login(t *testing.T) {
	t.Helper()
	cmd := exec.Command(binary, "token", "-client", "admin", "-url", in.base)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "KAPFHIR_DATA_DIR=" + in.dataDir}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kapfhir token -client admin: %v", err)
	}
	in.tokens = map[auth.Role]string{auth.RoleAdmin: strings.TrimSpace(string(out))}
	for _, role := range []auth.Role{auth.RoleClinic, auth.RoleEHR, auth.RoleAuditor} {
		in.tokens[role] = in.register(t, "e2e-"+string(role), role)
	}
}

// register (re)registers a client of role with a new key and returns a token for it.
func (in *instance) register(t *testing.T, id string, role auth.Role) string {
	t.Helper()
	k, err := auth.NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	var set map[string]any
	if err := json.Unmarshal(k.JWKS, &set); err != nil {
		t.Fatal(err)
	}
	res := in.doAs(t, auth.RoleAdmin, "PUT", "/api/v1/clients/"+id, map[string]any{
		"clientId": id, "jwks": set, "scopes": []string{"system/*.rs"}, "role": string(role),
	})
	if res.status != http.StatusOK && res.status != http.StatusCreated {
		t.Fatalf("registering client %s: %d %s", id, res.status, res.body)
	}
	tok, err := auth.RequestToken(t.Context(), http.DefaultClient, in.base+"/auth/token", id, k.Private, k.KID, "system/*.rs")
	if err != nil {
		t.Fatalf("token for %s: %v", id, err)
	}
	return tok
}

// roleFor is the role the tests act as for a request: the clinic for the
// domain API and FHIR, the admin for operators' routes, the auditor for
// the audit trail.
func roleFor(path string) auth.Role {
	switch {
	case strings.HasPrefix(path, "/api/v1/endpoints"), strings.HasPrefix(path, "/api/v1/sync"), strings.HasPrefix(path, "/api/v1/clients"):
		return auth.RoleAdmin
	case strings.HasPrefix(path, "/api/v1/audit"), strings.HasPrefix(path, "/fhir/AuditEvent"), strings.HasPrefix(path, "/fhir/Provenance"):
		return auth.RoleAuditor
	}
	return auth.RoleClinic
}
