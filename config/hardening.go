package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/kapfhir/kapfhir/seal"
)

// TLS serves HTTPS when CertFile and KeyFile are set.
type TLS struct {
	// CertFile and KeyFile are PEM files (the certificate chain and its key).
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
}

// Enabled reports whether HTTPS is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Certificate loads the certificate chain and its key.
func (t TLS) Certificate() (tls.Certificate, error) {
	return tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
}

func (t TLS) validate(p *Problems) {
	switch {
	case !t.Enabled():
		return
	case t.KeyFile == "":
		p.add("tls.keyFile", "is required when tls.certFile is set (the certificate's PEM private key)")
		return
	case t.CertFile == "":
		p.add("tls.certFile", "is required when tls.keyFile is set (the PEM certificate chain)")
		return
	}
	readable := true
	for _, f := range []struct{ key, path string }{{"tls.certFile", t.CertFile}, {"tls.keyFile", t.KeyFile}} {
		if _, err := readFile(f.path); err != nil {
			p.add(f.key, "%s", err)
			readable = false
		}
	}
	if !readable {
		return
	}
	if _, err := t.Certificate(); err != nil {
		p.add("tls.certFile", "and tls.keyFile must be a PEM certificate chain and its matching private key: %v", err)
	}
}

// readFile reads a file, saying why it cannot be read in a short reason.
func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("cannot read %s: %v", path, err)
	}
	return b, nil
}

// Outbound configures kapfhir's connections to EHRs. TLS is always verified.
type Outbound struct {
	// CAFile is a PEM bundle of extra certificate authorities trusted in
	// addition to the system's (e.g. a clinic's private CA).
	CAFile string `yaml:"caFile"`
}

// RootCAs returns the authorities EHR certificates are verified against:
// the system's plus those of CAFile, or nil (the system's alone) when no
// CAFile is configured.
func (o Outbound) RootCAs() (*x509.CertPool, error) {
	if o.CAFile == "" {
		return nil, nil
	}
	certs, err := readCAFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("outbound.caFile: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool() // no system roots here: the bundle alone
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

func (o Outbound) validate(p *Problems) {
	if o.CAFile == "" {
		return
	}
	if _, err := readCAFile(o.CAFile); err != nil {
		p.add("outbound.caFile", "%s", err)
	}
}

// readCAFile parses a PEM bundle: every CERTIFICATE block must parse, and
// there must be at least one.
func readCAFile(path string) ([]*x509.Certificate, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d is not a valid certificate: %v", path, n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate (want one or more -----BEGIN CERTIFICATE----- blocks)", path)
	}
	return certs, nil
}

// SealKeyEnv is the environment variable that holds the sealing key itself.
const SealKeyEnv = "KAPFHIR_SEAL_KEY"

// Secrets configures the key that encrypts secrets kept in the store
// (endpoint credentials, kapfhir's signing keys).
type Secrets struct {
	// KeyFile holds the base64 AES-256 key, mode 0600. Setting it as well
	// as KAPFHIR_SEAL_KEY is refused. With neither, kapfhir generates a key
	// into dataDir/seal.key on first start.
	KeyFile string `yaml:"keyFile"`
	// Key is the key itself (base64), from KAPFHIR_SEAL_KEY only: it is never
	// read from the file nor written in a dump, and prints redacted.
	Key Secret `yaml:"-"`
}

// Secret is a secret held in the configuration; fmt prints it redacted.
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "REDACTED"
}

// GoString implements fmt.GoStringer (%#v).
func (s Secret) GoString() string { return fmt.Sprintf("%q", s.String()) }

// Configured reports whether a key is configured (else kapfhir keeps a
// generated one in the data directory).
func (s Secrets) Configured() bool { return s.Key != "" || s.KeyFile != "" }

// SealKey returns the configured key, read with seal.KeyFromEnvOrFile;
// nil when none is configured.
func (s Secrets) SealKey() ([]byte, error) {
	if !s.Configured() {
		return nil, nil
	}
	lookup := func(string) (string, bool) { return string(s.Key), s.Key != "" }
	return seal.KeyFromEnvOrFile(lookup, SealKeyEnv, s.KeyFile)
}

func (s Secrets) validate(p *Problems) {
	if !s.Configured() {
		return
	}
	if s.Key != "" && s.KeyFile != "" {
		p.add("secrets.keyFile", "must not be set together with %s: set one", SealKeyEnv)
		return
	}
	if _, err := s.SealKey(); err != nil {
		key := "secrets.keyFile"
		if s.Key != "" {
			key = SealKeyEnv
		}
		p.add(key, "%v", err)
	}
}
