// Package adapter keeps kapfhir's EHR endpoints in sync: the Manager runs one
// push worker (adapter/engine) and, when enabled, one poller (adapter/pull)
// per endpoint, and offers the operators' actions (endpoint CRUD, test,
// status, replay, discard, backfill). Subpackages: ehrclient (HTTP, SMART
// Backend Services, retries, rate budget), outbound (bodies for an EHR),
// engine (the push worker).
package adapter
