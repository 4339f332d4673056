package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/kapfhir/kapfhir/endpoint"
)

// JWKS fetching defaults.
const (
	DefaultFetchTimeout = 5 * time.Second
	DefaultJWKSCacheTTL = 5 * time.Minute
	// DefaultMinRefetch is the least time between two fetches of one URL
	// prompted by an unknown kid or a failed fetch, so that assertions with
	// made-up kids cannot make kapfhir hammer a client's JWKS host.
	DefaultMinRefetch = time.Minute
	// maxJWKSBytes bounds a JWKS document, fetched or inline.
	maxJWKSBytes = 64 << 10
)

// Errors of JWKSFetcher.Key, wrapped.
var (
	// ErrUnknownKid: the JWKS holds no usable key with that kid.
	ErrUnknownKid = errors.New("no usable key with this kid in the client's JWKS")
	// ErrJWKSUnavailable: the JWKS could not be fetched or read.
	ErrJWKSUnavailable = errors.New("the client's JWKS could not be fetched")
)

// FetcherOptions configures a JWKSFetcher. Zero values take the defaults.
type FetcherOptions struct {
	// HTTPClient fetches the documents. Nil: a client with Timeout that
	// follows no redirects, uses no proxy and refuses link-local and
	// cloud-metadata addresses when it dials.
	HTTPClient *http.Client
	Timeout    time.Duration // default DefaultFetchTimeout; used only when HTTPClient is nil
	TTL        time.Duration // how long a fetched set is used; default DefaultJWKSCacheTTL
	MinRefetch time.Duration // default DefaultMinRefetch
	MaxBytes   int64         // largest document read; default 64 KiB
	Now        func() time.Time
}

// JWKSFetcher fetches clients' JWKS documents by URL and caches them. It is
// safe for concurrent use.
type JWKSFetcher struct {
	hc         *http.Client
	ttl        time.Duration
	minRefetch time.Duration
	maxBytes   int64
	now        func() time.Time

	mu   sync.Mutex
	sets map[string]*fetchedSet
}

// fetchedSet is the cache entry of one URL. Its mutex is held while the URL is
// fetched, so concurrent requests for one URL fetch it once.
type fetchedSet struct {
	mu      sync.Mutex
	keys    []clientKey
	ok      bool      // keys hold a successfully fetched set
	fetched time.Time // when keys were fetched
	tried   time.Time // the last attempt, successful or not
	err     error     // the last attempt's failure
}

// NewJWKSFetcher returns a fetcher configured by o.
func NewJWKSFetcher(o FetcherOptions) *JWKSFetcher {
	f := &JWKSFetcher{
		hc:         o.HTTPClient,
		ttl:        o.TTL,
		minRefetch: o.MinRefetch,
		maxBytes:   o.MaxBytes,
		now:        o.Now,
		sets:       map[string]*fetchedSet{},
	}
	if f.ttl <= 0 {
		f.ttl = DefaultJWKSCacheTTL
	}
	if f.minRefetch <= 0 {
		f.minRefetch = DefaultMinRefetch
	}
	if f.maxBytes <= 0 {
		f.maxBytes = maxJWKSBytes
	}
	if f.now == nil {
		f.now = time.Now
	}
	if f.hc == nil {
		timeout := o.Timeout
		if timeout <= 0 {
			timeout = DefaultFetchTimeout
		}
		f.hc = defaultFetchClient(timeout)
	}
	return f
}

// defaultFetchClient is the guarded client used when none is given.
func defaultFetchClient(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout, Control: guardAddress}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil, // a proxy would be dialled instead, escaping the guard
			DialContext:           d.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          10,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// guardAddress refuses, at dial time, addresses a JWKS host can never have,
// so a name that resolves to a metadata service is refused too.
func guardAddress(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	return endpoint.CheckAddr(a)
}

// key returns the usable key kid of the JWKS at url. A set is fetched when it
// is not cached or older than the TTL, and fetched again when kid is unknown
// or the last fetch failed, but then at most once per MinRefetch.
func (f *JWKSFetcher) key(ctx context.Context, url, kid string) (clientKey, error) {
	f.mu.Lock()
	e := f.sets[url]
	if e == nil {
		e = &fetchedSet{}
		f.sets[url] = e
	}
	f.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	now := f.now()
	fresh := e.ok && now.Sub(e.fetched) < f.ttl
	if fresh {
		if k, ok := findKey(e.keys, kid); ok {
			return k, nil
		}
	}
	if !e.tried.IsZero() && now.Sub(e.tried) < f.minRefetch {
		switch {
		case fresh:
			return clientKey{}, ErrUnknownKid
		case e.err != nil:
			return clientKey{}, e.err
		}
	}
	keys, err := f.fetch(ctx, url)
	e.tried = now
	if err != nil {
		e.err = err
		if !fresh {
			e.ok, e.keys = false, nil
		}
		return clientKey{}, err
	}
	e.keys, e.ok, e.fetched, e.err = keys, true, now, nil
	if k, ok := findKey(keys, kid); ok {
		return k, nil
	}
	return clientKey{}, ErrUnknownKid
}

// fetch GETs and parses one JWKS document.
func (f *JWKSFetcher) fetch(ctx context.Context, url string) ([]clientKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrJWKSUnavailable, err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := f.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrJWKSUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: status %d", ErrJWKSUnavailable, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrJWKSUnavailable, err)
	}
	if int64(len(body)) > f.maxBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrJWKSUnavailable, f.maxBytes)
	}
	keys, _, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("%w: the document %v", ErrJWKSUnavailable, err)
	}
	return keys, nil
}

// findKey returns the key named kid.
func findKey(keys []clientKey, kid string) (clientKey, bool) {
	for _, k := range keys {
		if k.kid == kid {
			return k, true
		}
	}
	return clientKey{}, false
}
