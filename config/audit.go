package config

// Audit configures the audit trail.
type Audit struct{}

func (a Audit) validate(p *Problems) {}
