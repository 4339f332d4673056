package auth

import "testing"

func TestRoleCan(t *testing.T) {
	actions := []Action{FHIRRead, FHIRSearch, DomainRead, DomainWrite, AdminEndpoints, AdminClients, Replay, SyncStatus, AuditRead, SyncLedgerRead}
	want := map[Role][]Action{
		RoleEHR:     {FHIRRead, FHIRSearch},
		RoleClinic:  {FHIRRead, FHIRSearch, DomainRead, DomainWrite},
		RoleAdmin:   {AdminEndpoints, AdminClients, Replay, SyncStatus},
		RoleAuditor: {FHIRRead, FHIRSearch, AuditRead, SyncLedgerRead},
		"root":      nil,
		"":          nil,
	}
	for role, allowed := range want {
		set := map[Action]bool{}
		for _, a := range allowed {
			set[a] = true
		}
		for _, a := range actions {
			if got := role.Can(a); got != set[a] {
				t.Errorf("%q.Can(%s) = %v, want %v", role, a, got, set[a])
			}
		}
	}
}

func TestRoleCanReadType(t *testing.T) {
	types := []string{"Patient", "CarePlan", "Observation", "Provenance", "AuditEvent"}
	want := map[Role][]bool{
		RoleEHR:     {true, true, true, true, false},
		RoleClinic:  {true, true, true, true, false},
		RoleAuditor: {false, false, false, true, true},
		RoleAdmin:   {false, false, false, false, false},
		"root":      {false, false, false, false, false},
	}
	for role, w := range want {
		for i, typ := range types {
			if got := role.CanReadType(typ); got != w[i] {
				t.Errorf("%q.CanReadType(%s) = %v, want %v", role, typ, got, w[i])
			}
		}
	}
}

func TestPrincipalCanReadFHIR(t *testing.T) {
	ehr := Principal{ClientID: "e", Role: RoleEHR, Scopes: []Scope{{"Observation", rs}}}
	admin := Principal{ClientID: "a", Role: RoleAdmin, Scopes: []Scope{{"*", PermAll}}}
	auditor := Principal{ClientID: "u", Role: RoleAuditor, Scopes: []Scope{{"*", rs}}}
	tests := []struct {
		p    Principal
		typ  string
		perm Perms
		want bool
	}{
		{ehr, "Observation", PermRead, true},
		{ehr, "Observation", rs, true},
		{ehr, "Patient", PermRead, false},         // scope
		{ehr, "Observation", PermCreate, false},   // FHIR is read-only
		{ehr, "Observation", 0, false},            // nothing asked
		{admin, "Patient", PermRead, false},       // role: no clinical data
		{auditor, "AuditEvent", PermSearch, true}, // role and scope
		{auditor, "Patient", PermRead, false},     // role
	}
	for _, tt := range tests {
		if got := tt.p.CanReadFHIR(tt.typ, tt.perm); got != tt.want {
			t.Errorf("%s.CanReadFHIR(%s, %s) = %v, want %v", tt.p.Role, tt.typ, tt.perm, got, tt.want)
		}
	}
	if !admin.Can(AdminClients) || ehr.Can(AdminClients) {
		t.Error("Principal.Can does not follow the role")
	}
}
