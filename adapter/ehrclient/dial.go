package ehrclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/kapfhir/kapfhir/endpoint"
)

// ErrAddressRefused is returned (wrapped) when the dialer refuses an address an
// EHR can never have: link-local, cloud metadata, unspecified or multicast.
// Such a request is never retried.
var ErrAddressRefused = errors.New("address refused")

// guardAddress is the dialer's Control: it runs on the resolved address just
// before connecting, so a host name that resolves to a metadata service is
// refused although configuration validation accepted the name.
func guardAddress(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAddressRefused, err)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address", ErrAddressRefused, host)
	}
	if err := endpoint.CheckAddr(a); err != nil {
		return fmt.Errorf("%w: %s %v", ErrAddressRefused, a, err)
	}
	return nil
}

// newTransport returns the pooled transport to one EHR: as many connections
// per host as the endpoint's concurrency, TLS 1.2 or later with the
// certificate verified against roots (nil: the system's), and the address
// guard on every dial. It uses no proxy: a proxy would be dialled instead of
// the EHR and so escape the guard.
func newTransport(ep endpoint.Endpoint, roots *x509.CertPool) *http.Transport {
	conc := max(ep.Concurrency, 1)
	d := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Control:   guardAddress,
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          conc,
		MaxIdleConnsPerHost:   conc,
		MaxConnsPerHost:       conc,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: ep.Timeout(),
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
	}
}

// isTimeout reports whether err is a network or client timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
