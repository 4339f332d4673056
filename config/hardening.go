package config

// TLS serves HTTPS when CertFile and KeyFile are set.
type TLS struct {
	// CertFile and KeyFile are PEM files (the certificate chain and its key).
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
}

func (t TLS) validate(p *Problems) {}

// Outbound configures kapfhir's connections to EHRs. TLS is always verified.
type Outbound struct {
	// CAFile is a PEM bundle of extra certificate authorities trusted in
	// addition to the system's (e.g. a clinic's private CA).
	CAFile string `yaml:"caFile"`
}

func (o Outbound) validate(p *Problems) {}

// Secrets configures the key that encrypts secrets kept in the store
// (endpoint credentials, kapfhir's signing keys).
type Secrets struct {
	// KeyFile holds the base64 AES-256 key (KAPFHIR_SEAL_KEY takes precedence).
	KeyFile string `yaml:"keyFile"`
}

func (s Secrets) validate(p *Problems) {}
