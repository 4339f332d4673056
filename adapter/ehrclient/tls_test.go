package ehrclient

import (
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/endpoint"
)

// TestOutboundTLSVerified runs the real transport against an EHR and token
// endpoint on loopback HTTPS whose certificate no system root signed: the
// client refuses it (before sending anything) unless the certificate is in
// the extra bundle.
func TestOutboundTLSVerified(t *testing.T) {
	var hits counter
	var mu sync.Mutex
	var seen []string // what the server received: the Basic secret and bearer tokens
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.inc()
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/oauth/token":
			_, secret, _ := r.BasicAuth()
			seen = append(seen, "secret "+secret)
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token":"tok-1","token_type":"Bearer","expires_in":300}`)
		case "/fhir/Goal/g1":
			seen = append(seen, r.Header.Get("Authorization"))
			w.Header().Set("Content-Type", FHIRJSON)
			io.WriteString(w, `{"resourceType":"Goal","id":"g1"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	t.Cleanup(srv.Close)

	ep := testEndpoint()
	ep.FHIRBaseURL = srv.URL + "/fhir"
	ep.Auth = endpoint.Auth{Type: endpoint.AuthClientSecret, TokenURL: srv.URL + "/oauth/token", ClientID: "kapfhir", ClientSecret: "s3cret", Scope: "system/*.rs"}

	t.Run("refused without the CA", func(t *testing.T) {
		c, err := New(ep, Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(t.Context(), "Goal", "g1")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Read = %v, want a certificate error", err)
		}
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("error %v does not wrap x509.UnknownAuthorityError", err)
		}
		if n := hits.get(); n != 0 {
			t.Errorf("the server received %d requests; nothing may be sent before the certificate is verified", n)
		}
	})

	t.Run("trusted with its certificate in the bundle", func(t *testing.T) {
		roots, err := x509.SystemCertPool()
		if err != nil {
			roots = x509.NewCertPool()
		}
		roots.AddCert(srv.Certificate())
		c, err := New(ep, Options{RootCAs: roots})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Read(t.Context(), "Goal", "g1")
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if resp.Status != http.StatusOK {
			t.Errorf("status %d", resp.Status)
		}
		mu.Lock()
		defer mu.Unlock()
		if diff := cmp.Diff([]string{"secret s3cret", "Bearer tok-1"}, seen); diff != "" {
			t.Errorf("the server received (-want +got):\n%s", diff)
		}
	})
}
