package auth

// Role is what a registered client is, and so what it may do. The scopes in
// its token narrow FHIR access further; a role never widens them.
type Role string

// The roles.
const (
	// RoleEHR is an EHR or other system reading clinical data: FHIR read and
	// search of clinical resource types only.
	RoleEHR Role = "ehr"
	// RoleClinic is the clinic's own software: the domain API's writes plus
	// FHIR read and search of clinical types.
	RoleClinic Role = "clinic"
	// RoleAdmin operates kapfhir: EHR endpoints, clients, replay, sync status.
	// It reads no clinical data (least privilege: an operator's credentials
	// are the likeliest to leak, and running the sync needs no clinical data).
	RoleAdmin Role = "admin"
	// RoleAuditor reads the audit trail (AuditEvent, Provenance), verifies and
	// exports it, and reads the sync ledger. It changes nothing.
	RoleAuditor Role = "auditor"
)

// Roles lists every role, for validation messages and documentation.
var Roles = []Role{RoleEHR, RoleClinic, RoleAdmin, RoleAuditor}

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleEHR, RoleClinic, RoleAdmin, RoleAuditor:
		return true
	}
	return false
}

// Action is something the server lets only some roles do.
type Action string

// The actions the server checks.
const (
	FHIRRead       Action = "fhir.read"        // GET /fhir/{type}/{id}, vread, history (subject to CanReadType)
	FHIRSearch     Action = "fhir.search"      // GET /fhir/{type}?... (subject to CanReadType)
	DomainWrite    Action = "domain.write"     // POST/PUT/DELETE on /api/v1
	DomainRead     Action = "domain.read"      // GET on /api/v1
	AdminEndpoints Action = "admin.endpoints"  // EHR endpoint CRUD and tests
	AdminClients   Action = "admin.clients"    // client registry CRUD
	Replay         Action = "admin.replay"     // replay, discard, backfill, reconcile sync items
	SyncStatus     Action = "admin.syncstatus" // sync queue status and per-endpoint state
	AuditRead      Action = "audit.read"       // audit verify and export
	SyncLedgerRead Action = "audit.syncledger" // the sync log (who sent what where, when)
)

// permissions is the one table the server consults. An action absent from a
// role's set is refused.
var permissions = map[Role]map[Action]bool{
	RoleEHR: {
		FHIRRead: true, FHIRSearch: true,
	},
	RoleClinic: {
		FHIRRead: true, FHIRSearch: true, DomainRead: true, DomainWrite: true,
	},
	RoleAdmin: {
		AdminEndpoints: true, AdminClients: true, Replay: true, SyncStatus: true,
	},
	RoleAuditor: {
		FHIRRead: true, FHIRSearch: true, AuditRead: true, SyncLedgerRead: true,
	},
}

// Can reports whether r may perform a. Unknown roles may do nothing.
func (r Role) Can(a Action) bool { return permissions[r][a] }

// auditTypes are the resource types that make up the audit trail.
var auditTypes = map[string]bool{"AuditEvent": true, "Provenance": true}

// CanReadType reports whether r may read or search FHIR resources of
// resourceType: auditors only AuditEvent and Provenance; ehr and clinic every
// type except AuditEvent (Provenance travels with clinical data); admin none.
// The token's scopes must allow the read too (see Allows).
func (r Role) CanReadType(resourceType string) bool {
	switch r {
	case RoleAuditor:
		return auditTypes[resourceType]
	case RoleEHR, RoleClinic:
		return resourceType != "AuditEvent"
	}
	return false
}
