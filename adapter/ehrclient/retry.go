package ehrclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"time"
)

// isCertificateError reports whether err is a TLS certificate failure.
func isCertificateError(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &cerr)
}

// jitterBackoff is lo·2^attempt capped at hi, then drawn uniformly from its
// upper half, never below lo.
func jitterBackoff(lo, hi time.Duration, attempt int) time.Duration {
	if hi < lo {
		hi = lo
	}
	d := lo
	for range attempt {
		if d >= hi/2 {
			d = hi
			break
		}
		d *= 2
	}
	d = min(d, hi)
	if half := d / 2; half > 0 {
		d = half + rand.N(half+1)
	}
	return max(d, lo)
}
