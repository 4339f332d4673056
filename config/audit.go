package config

import "time"

// Audit configures the audit trail.
type Audit struct {
	// Retention is how long audit records are kept; older ones are pruned
	// (the prune itself is recorded, and the chain verifies from where it
	// starts). 0, the default, keeps every record: choose it against the
	// clinic's obligations (HIPAA asks that documentation be kept six years).
	Retention time.Duration `yaml:"retention"`
	// PruneEvery is how often a running server prunes (default 24h).
	PruneEvery time.Duration `yaml:"pruneEvery"`
}

// minRetention is the shortest retention accepted: a trail kept less than a
// day cannot answer an auditor's question about yesterday.
const minRetention = 24 * time.Hour

func (a Audit) validate(p *Problems) {
	if a.Retention != 0 && a.Retention < minRetention {
		p.add("audit.retention", "must be 0 (keep every record) or at least 24h")
	}
	if a.PruneEvery < time.Minute || a.PruneEvery > 7*24*time.Hour {
		p.add("audit.pruneEvery", "must be between 1m and 168h")
	}
}
