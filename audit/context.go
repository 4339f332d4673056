package audit

import "context"

type agentKey struct{}

// WithAgent returns ctx carrying who is acting (the authenticated client),
// for the audit records written deeper down (a domain write audits itself
// in its own transaction).
func WithAgent(ctx context.Context, a Agent) context.Context {
	return context.WithValue(ctx, agentKey{}, a)
}

// AgentFrom returns the agent ctx carries, or kapfhir itself (System) when
// none does: work kapfhir starts on its own (the sync engine, the CLI).
func AgentFrom(ctx context.Context) Agent {
	if a, ok := ctx.Value(agentKey{}).(Agent); ok {
		return a
	}
	return System
}

// System is kapfhir acting on its own behalf.
var System = Agent{ClientID: "kapfhir", Role: "system"}
