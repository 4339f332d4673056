package endpoint

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/treatment"
)

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Validate checks e and returns every problem, by field (JSON names), or nil.
// It reads the private key file of a smart-backend endpoint to check it.
func Validate(e Endpoint) error {
	var p treatment.Problems
	if !idPattern.MatchString(e.ID) {
		p.Add("id", "must be 1 to 63 lower-case letters, digits or hyphens, starting with a letter or digit")
	}
	if strings.TrimSpace(e.Name) == "" || len(e.Name) > 200 {
		p.Add("name", "must be 1 to 200 characters")
	}
	if err := CheckURL(e.FHIRBaseURL, e.AllowInsecureHTTP); err != nil {
		p.Add("fhirBaseUrl", err.Error())
	}
	validateAuth(&p, e)
	if len(e.ResourceTypes) == 0 {
		p.Add("resourceTypes", "must name at least one of "+strings.Join(SyncableTypes, ", "))
	}
	for i, t := range e.ResourceTypes {
		switch {
		case !slices.Contains(SyncableTypes, t):
			p.Addf(fmt.Sprintf("resourceTypes[%d]", i), "must be one of %s", strings.Join(SyncableTypes, ", "))
		case slices.Index(e.ResourceTypes, t) != i:
			p.Addf(fmt.Sprintf("resourceTypes[%d]", i), "%s is listed twice", t)
		}
	}
	if e.CreatePatients && !e.Pushes("Patient") {
		p.Add("createPatients", "needs Patient in resourceTypes")
	}
	if u, err := url.Parse(e.PatientIdentifierSystem); err != nil || !u.IsAbs() {
		p.Add("patientIdentifierSystem", "must be an absolute URI (the identifier system the EHR knows patients by, e.g. its MRN system)")
	}
	between := func(field string, v, lo, hi int) {
		if v < lo || v > hi {
			p.Addf(field, "must be %d to %d", lo, hi)
		}
	}
	between("concurrency", e.Concurrency, 1, 64)
	if e.RateLimit.PerSecond <= 0 || e.RateLimit.PerSecond > 1000 {
		p.Add("rateLimit.perSecond", "must be more than 0 and at most 1000")
	}
	between("rateLimit.burst", e.RateLimit.Burst, 1, 1000)
	between("timeoutSeconds", e.TimeoutSeconds, 1, 300)
	between("retry.maxAttempts", e.Retry.MaxAttempts, 1, 20)
	if d := e.Retry.MinBackoff.D(); d < time.Millisecond || d > time.Minute {
		p.Add("retry.minBackoff", "must be 1ms to 1m")
	}
	if d := e.Retry.MaxBackoff.D(); d < e.Retry.MinBackoff.D() || d > time.Hour {
		p.Add("retry.maxBackoff", "must be at least retry.minBackoff and at most 1h")
	}
	if d := e.Retry.MaxRetryAfter.D(); d < 0 || d > time.Hour {
		p.Add("retry.maxRetryAfter", "must be 0 to 1h")
	}
	if e.Pull.Enabled {
		between("pull.intervalSeconds", e.Pull.IntervalSeconds, 1, 86400)
	}
	return p.Err("invalid endpoint")
}

func validateAuth(p *treatment.Problems, e Endpoint) {
	a := e.Auth
	if a.TokenURL != "" {
		if err := CheckURL(a.TokenURL, e.AllowInsecureHTTP); err != nil {
			p.Add("auth.tokenUrl", err.Error())
		}
	}
	switch a.Type {
	case AuthSMARTBackend:
		if a.ClientID == "" {
			p.Add("auth.clientId", "is required for smart-backend")
		}
		if a.Kid == "" {
			p.Add("auth.kid", "is required for smart-backend (the key id the EHR registered)")
		}
		if a.Alg != AlgRS384 && a.Alg != AlgES384 {
			p.Add("auth.alg", "must be RS384 or ES384")
		}
		switch {
		case a.PrivateKeyFile == "" && a.PrivateKeyPEM == "":
			p.Add("auth.privateKeyFile", "is required for smart-backend (a PEM file with an RSA ≥2048-bit or EC P-384 private key)")
		case a.PrivateKeyFile != "" && a.PrivateKeyPEM != "":
			p.Add("auth.privateKeyPem", "give privateKeyFile or privateKeyPem, not both")
		default:
			field := "auth.privateKeyFile"
			if a.PrivateKeyPEM != "" {
				field = "auth.privateKeyPem"
			}
			if _, err := SigningKey(a); err != nil {
				p.Add(field, err.Error())
			}
		}
		if strings.TrimSpace(a.Scope) == "" {
			p.Add("auth.scope", "is required for smart-backend (e.g. system/*.rs system/CarePlan.cu)")
		}
	case AuthClientSecret:
		if a.ClientID == "" {
			p.Add("auth.clientId", "is required for client-secret")
		}
		if a.ClientSecret == "" {
			p.Add("auth.clientSecret", "is required for client-secret")
		}
	case AuthBearer:
		if a.Token == "" {
			p.Add("auth.token", "is required for bearer")
		}
	case AuthNone:
	default:
		p.Add("auth.type", "must be smart-backend, client-secret, bearer or none")
	}
}

// CheckURL checks an EHR URL: absolute, no credentials, query or fragment;
// https, or http to a loopback address (or any host when allowInsecure); and
// never a link-local or cloud-metadata address.
func CheckURL(raw string, allowInsecure bool) error {
	if raw == "" {
		return errors.New("is required")
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return errors.New("must be an absolute http(s) URL")
	}
	if u.User != nil {
		return errors.New("must not hold credentials (configure auth instead)")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return errors.New("must not have a query or a fragment")
	}
	host := u.Hostname()
	if err := CheckHost(host); err != nil {
		return err
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !IsLoopback(host) && !allowInsecure {
			return errors.New("must use https (http is allowed only to loopback addresses unless allowInsecureHttp is set)")
		}
	default:
		return fmt.Errorf("scheme %q is not supported: use https", u.Scheme)
	}
	return nil
}

// metadataHosts are cloud instance-metadata services, by name.
var metadataHosts = []string{"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}

// metadataAddrs are cloud instance-metadata services outside the link-local
// ranges (AWS IPv6, Alibaba, Oracle).
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("100.100.100.200"),
	netip.MustParseAddr("192.0.0.192"),
}

// CheckHost refuses host names and literal addresses an EHR can never have.
func CheckHost(host string) error {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if slices.Contains(metadataHosts, h) {
		return errors.New("must not be a cloud metadata service")
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return CheckAddr(a)
	}
	return nil
}

// CheckAddr refuses link-local, unspecified, multicast and cloud-metadata
// addresses. The EHR client's dialer calls it on every resolved address, so a
// name that resolves to one is refused too.
func CheckAddr(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case slices.Contains(metadataAddrs, a):
		return errors.New("must not be a cloud metadata service")
	case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
		return errors.New("must not be a link-local address (this range holds cloud metadata services)")
	case a.IsUnspecified():
		return errors.New("must not be an unspecified address")
	case a.IsMulticast():
		return errors.New("must not be a multicast address")
	}
	return nil
}

// IsLoopback reports whether host is localhost or a loopback address.
func IsLoopback(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// SigningKey loads and checks the SMART Backend Services private key: RSA of
// at least 2048 bits for RS384, EC P-384 for ES384.
func SigningKey(a Auth) (crypto.Signer, error) {
	data := []byte(a.PrivateKeyPEM)
	if a.PrivateKeyFile != "" {
		b, err := os.ReadFile(a.PrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read the key file: %v", errors.Unwrap(err))
		}
		data = b
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("holds no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, errors.New("is not a valid private key")
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if a.Alg != AlgRS384 {
			return nil, fmt.Errorf("is an RSA key, which needs alg RS384 (alg is %q)", a.Alg)
		}
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("is a %d-bit RSA key; at least 2048 bits are required", k.N.BitLen())
		}
		return k, nil
	case *ecdsa.PrivateKey:
		if a.Alg != AlgES384 {
			return nil, fmt.Errorf("is an EC key, which needs alg ES384 (alg is %q)", a.Alg)
		}
		if k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("is an EC key on %s; ES384 needs P-384", k.Curve.Params().Name)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("holds a %T; RSA or EC P-384 is required", key)
	}
}
