// Package endpoint describes an EHR that kapfhir keeps in sync: where it is,
// how to authenticate to it, and how hard it may be pushed. It validates
// endpoints (every problem, by field) and guards against requests to addresses
// an EHR can never have (link-local, cloud metadata). Plain data and pure
// checks: no HTTP, no store.
package endpoint

import (
	"fmt"
	"slices"
	"time"
)

// AuthType is how kapfhir authenticates to an EHR.
type AuthType string

// Authentication types.
const (
	// AuthSMARTBackend is SMART Backend Services: a signed JWT client
	// assertion exchanged for an access token (client_credentials grant).
	AuthSMARTBackend AuthType = "smart-backend"
	// AuthClientSecret is the client_credentials grant with a client secret
	// (HTTP Basic to the token endpoint).
	AuthClientSecret AuthType = "client-secret"
	// AuthBearer sends a fixed, pre-issued bearer token.
	AuthBearer AuthType = "bearer"
	// AuthNone sends no credentials (test servers only).
	AuthNone AuthType = "none"
)

// Signing algorithms for SMART Backend Services client assertions.
const (
	AlgRS384 = "RS384"
	AlgES384 = "ES384"
)

// Auth is how to obtain credentials. Secret fields are write-only: they are
// stored, but never returned by the API, dumped or logged (see Redacted).
type Auth struct {
	Type AuthType `json:"type" yaml:"type"`
	// TokenURL is optional: when empty it is discovered from
	// {fhirBaseUrl}/.well-known/smart-configuration.
	TokenURL string `json:"tokenUrl,omitempty" yaml:"tokenUrl"`
	ClientID string `json:"clientId,omitempty" yaml:"clientId"`
	// PrivateKeyFile is a PEM file holding an RSA (≥2048 bits) or EC P-384
	// private key, on the machine kapfhir runs on.
	PrivateKeyFile string `json:"privateKeyFile,omitempty" yaml:"privateKeyFile"`
	// PrivateKeyPEM is the key itself, for endpoints created through the API
	// (write-only).
	PrivateKeyPEM string `json:"privateKeyPem,omitempty" yaml:"privateKeyPem"`
	Alg           string `json:"alg,omitempty" yaml:"alg"`
	Kid           string `json:"kid,omitempty" yaml:"kid"`
	Scope         string `json:"scope,omitempty" yaml:"scope"`
	// ClientSecret is for AuthClientSecret (write-only).
	ClientSecret string `json:"clientSecret,omitempty" yaml:"clientSecret"`
	// Token is for AuthBearer (write-only).
	Token string `json:"token,omitempty" yaml:"token"`
}

// RateLimit is a token bucket: PerSecond requests on average, Burst at once.
type RateLimit struct {
	PerSecond float64 `json:"perSecond" yaml:"perSecond"`
	Burst     int     `json:"burst" yaml:"burst"`
}

// Retry bounds the retries of one request that is safe to repeat.
type Retry struct {
	MaxAttempts   int      `json:"maxAttempts" yaml:"maxAttempts"`
	MinBackoff    Duration `json:"minBackoff" yaml:"minBackoff"`
	MaxBackoff    Duration `json:"maxBackoff" yaml:"maxBackoff"`
	MaxRetryAfter Duration `json:"maxRetryAfter" yaml:"maxRetryAfter"`
}

// Pull configures polling the EHR for changes to kapfhir's Appointments.
type Pull struct {
	Enabled         bool `json:"enabled" yaml:"enabled"`
	IntervalSeconds int  `json:"intervalSeconds" yaml:"intervalSeconds"`
}

// Endpoint is one EHR.
type Endpoint struct {
	ID          string `json:"id" yaml:"id"`
	Name        string `json:"name" yaml:"name"`
	FHIRBaseURL string `json:"fhirBaseUrl" yaml:"fhirBaseUrl"`
	Auth        Auth   `json:"auth" yaml:"auth"`
	// ResourceTypes are the FHIR types pushed to this EHR.
	ResourceTypes []string `json:"resourceTypes" yaml:"resourceTypes"`
	// PatientIdentifierSystem is the identifier system the EHR knows
	// patients by (e.g. its MRN system); kapfhir resolves its patients
	// through it.
	PatientIdentifierSystem string `json:"patientIdentifierSystem" yaml:"patientIdentifierSystem"`
	// CreatePatients lets kapfhir create a Patient the EHR does not have.
	// Off by default: the EHR owns its patients.
	CreatePatients bool      `json:"createPatients" yaml:"createPatients"`
	Concurrency    int       `json:"concurrency" yaml:"concurrency"`
	RateLimit      RateLimit `json:"rateLimit" yaml:"rateLimit"`
	TimeoutSeconds int       `json:"timeoutSeconds" yaml:"timeoutSeconds"`
	Retry          Retry     `json:"retry" yaml:"retry"`
	Pull           Pull      `json:"pull" yaml:"pull"`
	Enabled        bool      `json:"enabled" yaml:"enabled"`
	// AllowInsecureHTTP permits http:// to a non-loopback host (never
	// link-local or metadata addresses).
	AllowInsecureHTTP bool `json:"allowInsecureHttp" yaml:"allowInsecureHttp"`
}

// SyncableTypes are the resource types kapfhir can push, in dependency order:
// a type's references point only at types before it (the CarePlan ↔
// Appointment cycle is broken by writing Appointments first and linking
// them back afterwards).
var SyncableTypes = []string{"Patient", "Goal", "Appointment", "CarePlan", "Observation"}

// Defaults returns an endpoint with every optional field at its default;
// decode configuration over it so that absent fields keep their defaults.
func Defaults() Endpoint {
	return Endpoint{
		Auth:           Auth{Type: AuthSMARTBackend, Alg: AlgRS384, Scope: "system/*.rs system/CarePlan.cu system/Appointment.cu system/Observation.cu system/Goal.cu"},
		ResourceTypes:  []string{"Goal", "Appointment", "CarePlan", "Observation"},
		Concurrency:    4,
		RateLimit:      RateLimit{PerSecond: 10, Burst: 10},
		TimeoutSeconds: 30,
		Retry: Retry{
			MaxAttempts:   5,
			MinBackoff:    Duration(500 * time.Millisecond),
			MaxBackoff:    Duration(30 * time.Second),
			MaxRetryAfter: Duration(2 * time.Minute),
		},
		Pull:    Pull{Enabled: false, IntervalSeconds: 60},
		Enabled: true,
	}
}

// Timeout is the per-request timeout.
func (e Endpoint) Timeout() time.Duration { return time.Duration(e.TimeoutSeconds) * time.Second }

// Pushes reports whether resources of type typ are pushed to this endpoint.
func (e Endpoint) Pushes(typ string) bool { return slices.Contains(e.ResourceTypes, typ) }

// Secret is one write-only field of an endpoint's Auth.
type Secret struct {
	// Name is the field's JSON name (privateKeyPem, clientSecret, token).
	Name string
	// Value points at the field.
	Value *string
}

// Secrets returns a's write-only fields, always in the same order: the
// fields that Redacted hides, KeepSecrets keeps and the store seals.
func (a *Auth) Secrets() []Secret {
	return []Secret{
		{Name: "privateKeyPem", Value: &a.PrivateKeyPEM},
		{Name: "clientSecret", Value: &a.ClientSecret},
		{Name: "token", Value: &a.Token},
	}
}

// Redacted returns a copy without secrets, for API answers, dumps and logs.
// A secret that is set reads Redaction, so callers see that one is stored.
func (e Endpoint) Redacted() Endpoint {
	for _, s := range e.Auth.Secrets() {
		*s.Value = redact(*s.Value)
	}
	e.ResourceTypes = slices.Clone(e.ResourceTypes)
	return e
}

// Redaction is what Redacted puts in place of a secret that is set.
const Redaction = "[redacted]"

func redact(s string) string {
	if s == "" {
		return ""
	}
	return Redaction
}

// KeepSecrets fills the secrets e leaves empty (or redacted) from old, so an
// update that does not repeat a write-only secret keeps it.
func (e Endpoint) KeepSecrets(old Endpoint) Endpoint {
	if e.Auth.Type != old.Auth.Type {
		return e
	}
	olds := old.Auth.Secrets()
	for i, s := range e.Auth.Secrets() {
		if *s.Value == "" || *s.Value == Redaction {
			*s.Value = *olds[i].Value
		}
	}
	return e
}

// Duration is a time.Duration written as a Go duration string ("500ms", "2m")
// in JSON and YAML.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (use e.g. 500ms, 30s, 2m)", b)
	}
	*d = Duration(v)
	return nil
}

// Source says where an endpoint is defined.
type Source string

// Sources.
const (
	// SourceConfig: defined in the configuration file; the API cannot change it.
	SourceConfig Source = "config"
	// SourceAPI: created through the admin API.
	SourceAPI Source = "api"
)

// AuthState is the endpoint's authentication health.
type AuthState string

// Authentication states.
const (
	AuthOK AuthState = "ok"
	// AuthFailed: the EHR refused kapfhir's credentials after a renewal; the
	// endpoint is paused until an operator fixes it (updating the endpoint or
	// testing it successfully clears this).
	AuthFailed AuthState = "auth-failed"
)

// Stored is an endpoint as the store keeps it, with its runtime state.
type Stored struct {
	Endpoint
	Source    Source    `json:"source"`
	AuthState AuthState `json:"authState"`
	// LastError is the last endpoint-level failure (caller-safe, no PHI).
	LastError string    `json:"lastError,omitempty"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
}
