package ehrclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/treatment"
)

const operationOutcome = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"rule 42"}]}`

// failFirst answers status to the first n requests, then 200.
func failFirst(n, status int, hits *counter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.inc() <= n {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("ETag", `W/"2"`)
		w.WriteHeader(http.StatusOK)
	})
}

func TestRetriesSafeRequests(t *testing.T) {
	for _, status := range []int{429, 502, 503, 504} {
		for _, method := range []string{http.MethodGet, http.MethodPut} {
			t.Run(fmt.Sprintf("%s %d", method, status), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					var hits counter
					c, _ := newTestClient(t, testEndpoint(), handlerTransport(failFirst(2, status, &hits)))
					var body []byte
					if method == http.MethodPut {
						body = []byte(`{"resourceType":"Goal"}`)
					}
					resp, err := c.Do(t.Context(), Request{Method: method, Path: "Goal/g1", Body: body, Idempotent: true})
					if err != nil {
						t.Fatalf("Do: %v", err)
					}
					if diff := cmp.Diff([]int{200, 3}, []int{resp.Status, hits.get()}); diff != "" {
						t.Errorf("status, hits (-want +got):\n%s", diff)
					}
				})
			})
		}
	}
}

func TestNeverRetriesPlainPOST(t *testing.T) {
	// Even a caller that wrongly claims a plain POST is idempotent gets no retry.
	for _, idem := range []bool{false, true} {
		t.Run(fmt.Sprint("idempotent=", idem), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var hits counter
				c, _ := newTestClient(t, testEndpoint(), handlerTransport(failFirst(1, 503, &hits)))
				resp, err := c.Do(t.Context(), Request{Method: http.MethodPost, Path: "Goal", Body: []byte(`{}`), Idempotent: idem})
				if err != nil {
					t.Fatalf("Do: %v", err)
				}
				if diff := cmp.Diff([]int{503, 1}, []int{resp.Status, hits.get()}); diff != "" {
					t.Errorf("status, hits (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestRetriesConditionalCreate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		var seen []string
		var mu sync.Mutex
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, r.Header.Get("If-None-Exist"))
			mu.Unlock()
			failFirst(1, 503, &hits).ServeHTTP(w, r)
		})
		c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
		resp, err := c.Do(t.Context(), Request{
			Method:     http.MethodPost,
			Path:       "Goal",
			Body:       []byte(`{}`),
			Header:     http.Header{"If-None-Exist": {"identifier=urn:x|1"}},
			Idempotent: true,
		})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		if diff := cmp.Diff([]int{200, 2}, []int{resp.Status, hits.get()}); diff != "" {
			t.Errorf("status, hits (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"identifier=urn:x|1", "identifier=urn:x|1"}, seen); diff != "" {
			t.Errorf("If-None-Exist per attempt (-want +got):\n%s", diff)
		}
	})
}

func TestRetryAfterHonoured(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value func(now time.Time) string
		want  time.Duration
	}{
		{"seconds", func(time.Time) string { return "7" }, 7 * time.Second},
		{"http date", func(now time.Time) string { return now.Add(90 * time.Second).UTC().Format(http.TimeFormat) }, 90 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var mu sync.Mutex
				var at []time.Time
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					defer mu.Unlock()
					at = append(at, time.Now())
					if len(at) == 1 {
						w.Header().Set("Retry-After", tc.value(time.Now()))
						w.WriteHeader(http.StatusTooManyRequests)
						return
					}
					w.WriteHeader(http.StatusOK)
				})
				c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
				resp, err := c.Read(t.Context(), "Goal", "g1")
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if resp.Status != 200 || len(at) != 2 {
					t.Fatalf("status %d after %d requests, want 200 after 2", resp.Status, len(at))
				}
				if got := at[1].Sub(at[0]); got != tc.want {
					t.Errorf("waited %v between attempts, want exactly %v", got, tc.want)
				}
			})
		})
	}
}

func TestRetryAfterAboveMaxIsReturned(t *testing.T) {
	for _, status := range []int{429, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var hits counter
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					hits.inc()
					w.Header().Set("Retry-After", "600")
					w.WriteHeader(status)
					io.WriteString(w, operationOutcome)
				})
				c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
				start := time.Now()
				resp, err := c.Read(t.Context(), "Goal", "g1")
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				type result struct {
					Status     int
					RetryAfter time.Duration
					Hits       int
					Waited     time.Duration
					Body       string
				}
				want := result{status, 10 * time.Minute, 1, 0, operationOutcome}
				got := result{resp.Status, resp.RetryAfter, hits.get(), time.Since(start), string(resp.Body)}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestRetriesExhaustedReturnsLastAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.inc()
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, operationOutcome)
		})
		ep := testEndpoint()
		ep.Retry.MaxAttempts = 3
		c, _ := newTestClient(t, ep, handlerTransport(h))
		start := time.Now()
		resp, err := c.Read(t.Context(), "Goal", "g1")
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if diff := cmp.Diff([]any{502, 3, operationOutcome}, []any{resp.Status, hits.get(), string(resp.Body)}); diff != "" {
			t.Errorf("status, hits, body (-want +got):\n%s", diff)
		}
		// Two backoffs: the first in [50ms, 100ms] (never below min: 100ms),
		// the second in [100ms, 200ms].
		if waited := time.Since(start); waited < 200*time.Millisecond || waited > 300*time.Millisecond {
			t.Errorf("waited %v in backoffs, want 200ms..300ms", waited)
		}
	})
}

// connRefused is what a dial to a closed port returns.
var connRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

// refusedFirst refuses the first n connections, counted in hits, then
// passes requests to next (nil: refuses every connection).
func refusedFirst(hits *counter, n int, next http.RoundTripper) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		if hits.inc() <= n || next == nil {
			return nil, connRefused
		}
		return next.RoundTrip(r)
	}
}

func TestConnectionErrorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		ok := handlerTransport(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		rt := refusedFirst(&hits, 1, ok)
		c, _ := newTestClient(t, testEndpoint(), rt)
		resp, err := c.Do(t.Context(), Request{Method: http.MethodPut, Path: "Goal/g1", Body: []byte(`{}`), Idempotent: true})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		if diff := cmp.Diff([]int{200, 2}, []int{resp.Status, hits.get()}); diff != "" {
			t.Errorf("status, hits (-want +got):\n%s", diff)
		}
	})
}

func TestConnectionErrorOutlastingRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		rt := refusedFirst(&hits, 0, nil)
		c, _ := newTestClient(t, testEndpoint(), rt)
		_, err := c.Search(t.Context(), "Patient", url.Values{"identifier": {"urn:example:mrn|SECRET-MRN"}})
		if got := treatment.ErrorKind(err); got != treatment.KindUnavailable {
			t.Fatalf("error kind %q (%v), want unavailable", got, err)
		}
		if strings.Contains(err.Error(), "SECRET-MRN") || strings.Contains(err.Error(), "identifier") {
			t.Errorf("error carries the query: %v", err)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("error does not wrap the cause: %v", err)
		}
		if got := hits.get(); got != 5 {
			t.Errorf("%d attempts, want 5", got)
		}
	})
}

func TestTimeoutRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		ok := handlerTransport(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if hits.inc() == 1 {
				<-r.Context().Done() // the EHR never answers
				return nil, r.Context().Err()
			}
			return ok.RoundTrip(r)
		})
		ep := testEndpoint()
		ep.TimeoutSeconds = 10
		c, _ := newTestClient(t, ep, rt)
		start := time.Now()
		resp, err := c.Read(t.Context(), "Goal", "g1")
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if resp.Status != 200 || hits.get() != 2 {
			t.Errorf("status %d after %d attempts, want 200 after 2", resp.Status, hits.get())
		}
		if waited := time.Since(start); waited < 10*time.Second {
			t.Errorf("took %v, want the 10s timeout and a backoff", waited)
		}
	})
}

func TestContextCancelStopsRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var hits counter
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.inc()
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
		done := make(chan error, 1)
		go func() {
			_, err := c.Read(ctx, "Goal", "g1")
			done <- err
		}()
		synctest.Wait() // the client is waiting out Retry-After
		start := time.Now()
		cancel()
		err := <-done
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		if hits.get() != 1 || time.Since(start) != 0 {
			t.Errorf("%d attempts, %v after cancel; want 1 attempt, an immediate return", hits.get(), time.Since(start))
		}
	})
}

func TestOperationOutcomeKept(t *testing.T) {
	for _, status := range []int{400, 404, 409, 412, 422} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var hits counter
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					hits.inc()
					w.Header().Set("Content-Type", FHIRJSON)
					w.WriteHeader(status)
					io.WriteString(w, operationOutcome)
				})
				c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
				resp, err := c.Do(t.Context(), Request{Method: http.MethodPut, Path: "Goal/g1", Body: []byte(`{}`), Idempotent: true})
				if err != nil {
					t.Fatalf("Do: %v", err)
				}
				if diff := cmp.Diff([]any{status, operationOutcome, 1}, []any{resp.Status, string(resp.Body), hits.get()}); diff != "" {
					t.Errorf("status, body, hits (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestRequestHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var got http.Header
		var gotURL string
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = r.Header.Clone()
			gotURL = r.URL.String()
			w.Header().Set("Location", testBase+"/Goal/g1/_history/7")
			w.WriteHeader(http.StatusCreated)
		})
		ep := testEndpoint()
		ep.Auth = endpoint.Auth{Type: endpoint.AuthBearer, Token: "fixed-token"}
		c, _ := newTestClient(t, ep, handlerTransport(h))
		resp, err := c.Do(t.Context(), Request{
			Method:     http.MethodPut,
			Path:       "/Goal?identifier=urn:x|1",
			Body:       []byte(`{}`),
			Header:     http.Header{"If-Match": {`W/"6"`}},
			Idempotent: true,
		})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		want := map[string]string{
			"Accept":        FHIRJSON,
			"Content-Type":  FHIRJSON,
			"Authorization": "Bearer fixed-token",
			"If-Match":      `W/"6"`,
			"User-Agent":    "kapfhir-test",
		}
		gotSome := map[string]string{}
		for k := range want {
			gotSome[k] = got.Get(k)
		}
		if diff := cmp.Diff(want, gotSome); diff != "" {
			t.Errorf("headers (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(testBase+"/Goal?identifier=urn:x%7C1", strings.ReplaceAll(gotURL, "|", "%7C")); diff != "" {
			t.Errorf("URL (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{testBase + "/Goal/g1/_history/7", "7"}, []string{resp.Location, resp.VersionID}); diff != "" {
			t.Errorf("location, version (-want +got):\n%s", diff)
		}
	})
}

func TestResolve(t *testing.T) {
	c, _ := newTestClient(t, testEndpoint(), handlerTransport(http.NotFoundHandler()))
	for _, tc := range []struct {
		path, want string
		ok         bool
	}{
		{"Goal/1", testBase + "/Goal/1", true},
		{"/Goal?x=1", testBase + "/Goal?x=1", true},
		{testBase + "?_getpages=abc", testBase + "?_getpages=abc", true},
		{testBase + "/Goal?_cursor=2", testBase + "/Goal?_cursor=2", true},
		{"https://evil.example/fhir/Goal", "", false},
		{"https://ehr.example/fhirx/Goal", "", false},
	} {
		got, err := c.resolve(tc.path)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("resolve(%q) = %q, %v; want %q, ok=%v", tc.path, got, err, tc.want, tc.ok)
		}
	}
}

func TestVersionID(t *testing.T) {
	for _, tc := range []struct{ etag, location, want string }{
		{`W/"3"`, "", "3"},
		{`"4"`, "", "4"},
		{"", testBase + "/Goal/g1/_history/5", "5"},
		{"", "Goal/g1/_history/6?x=y", "6"},
		{`W/""`, "Goal/g1/_history/8", "8"},
		{"", testBase + "/Goal/g1", ""},
		{"garbage", "", ""},
	} {
		if got := versionID(tc.etag, tc.location); got != tc.want {
			t.Errorf("versionID(%q, %q) = %q, want %q", tc.etag, tc.location, got, tc.want)
		}
	}
}

func TestQueryNeverLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("attempt") == "" {
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"BODY-SECRET"}]}`)
			}
		})
		c, logs := newTestClient(t, testEndpoint(), handlerTransport(h))
		_, err := c.Search(t.Context(), "Patient", url.Values{"identifier": {"urn:example:mrn|SECRET-MRN"}, "birthdate": {"1970-01-01"}})
		if err != nil {
			t.Fatalf("Search: %v", err)
		}
		out := logs.String()
		for _, leak := range []string{"SECRET-MRN", "1970-01-01", "identifier", "BODY-SECRET", "?"} {
			if strings.Contains(out, leak) {
				t.Errorf("log contains %q:\n%s", leak, out)
			}
		}
		for _, want := range []string{`"path":"/fhir/Patient"`, `"status":503`, `"attempt":2`, `"endpoint":"ehr-test"`} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %s:\n%s", want, out)
			}
		}
	})
}

func TestBearerAndNone401(t *testing.T) {
	for _, auth := range []endpoint.Auth{{Type: endpoint.AuthBearer, Token: "fixed"}, {Type: endpoint.AuthNone}} {
		t.Run(string(auth.Type), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var hits counter
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					hits.inc()
					w.WriteHeader(http.StatusUnauthorized)
				})
				ep := testEndpoint()
				ep.Auth = auth
				c, _ := newTestClient(t, ep, handlerTransport(h))
				_, err := c.Read(t.Context(), "Goal", "g1")
				if got := treatment.ErrorKind(err); got != treatment.KindUnauthorized {
					t.Errorf("kind %q (%v), want unauthorized", got, err)
				}
				if hits.get() != 1 {
					t.Errorf("%d requests, want 1 (nothing to renew)", hits.get())
				}
			})
		})
	}
}

func TestCapabilities(t *testing.T) {
	const cs = `{"resourceType":"CapabilityStatement","status":"active","date":"2024-01-01","kind":"instance",
	"fhirVersion":"4.0.1","format":["json"],"rest":[{"mode":"server",
	"interaction":[{"code":"transaction"}],
	"resource":[
	 {"type":"CarePlan","interaction":[{"code":"read"},{"code":"update"},{"code":"create"},{"code":"search-type"}],
	  "updateCreate":true,"conditionalCreate":true,"conditionalUpdate":true},
	 {"type":"Patient","interaction":[{"code":"read"},{"code":"search-type"}]}]}]}`
	synctest.Test(t, func(t *testing.T) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/fhir/metadata" {
				http.NotFound(w, r)
				return
			}
			io.WriteString(w, cs)
		})
		c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
		got, err := c.Capabilities(t.Context())
		if err != nil {
			t.Fatalf("Capabilities: %v", err)
		}
		want := &Capabilities{
			FHIRVersion: "4.0.1",
			Transaction: true,
			Resources: map[string]ResourceCapabilities{
				"CarePlan": {Interactions: []string{"read", "update", "create", "search-type"}, ConditionalCreate: true, ConditionalUpdate: true, UpdateCreate: true},
				"Patient":  {Interactions: []string{"read", "search-type"}},
			},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Capabilities (-want +got):\n%s", diff)
		}
		if !got.Supports("CarePlan", "update") || got.Supports("Patient", "create") || got.Supports("Goal", "read") {
			t.Error("Supports answers wrongly")
		}
	})
}

func TestCapabilitiesRejectsNonFHIR(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"hello":"world"}`) })
		c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
		if _, err := c.Capabilities(t.Context()); treatment.ErrorKind(err) != treatment.KindInvalid {
			t.Errorf("err = %v, want invalid", err)
		}
	})
}

func TestGuardAddress(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		refused bool
	}{
		{"169.254.169.254:80", true},
		{"[fe80::1]:443", true},
		{"[fd00:ec2::254]:80", true},
		{"100.100.100.200:80", true},
		{"0.0.0.0:443", true},
		{"127.0.0.1:8080", false},
		{"[::1]:8080", false},
		{"10.1.2.3:443", false},
		{"203.0.113.7:443", false},
	} {
		err := guardAddress("tcp", tc.addr, nil)
		if got := errors.Is(err, ErrAddressRefused); got != tc.refused {
			t.Errorf("guardAddress(%s) = %v, want refused=%v", tc.addr, err, tc.refused)
		}
	}
}

func TestDialerRefusesMetadataAddress(t *testing.T) {
	// The real transport: the dialer's Control refuses the address before
	// any packet is sent, so this needs no network.
	tr := newTransport(testEndpoint(), nil)
	t.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://169.254.169.254/latest/meta-data/", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tr.RoundTrip(req)
	if !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("RoundTrip = %v, want ErrAddressRefused", err)
	}
	if retryableError(err) {
		t.Error("a refused address must not be retried")
	}
}

func TestNewRefusesBadBaseURL(t *testing.T) {
	ep := testEndpoint()
	ep.FHIRBaseURL = "http://169.254.169.254/fhir"
	if _, err := New(ep, Options{}); treatment.ErrorKind(err) != treatment.KindInvalid {
		t.Errorf("New = %v, want invalid", err)
	}
}

func TestJitterBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	for attempt := range 10 {
		ceil := min(lo<<attempt, hi)
		for range 50 {
			d := jitterBackoff(lo, hi, attempt)
			if d < max(ceil/2, lo) || d > ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, max(ceil/2, lo), ceil)
			}
		}
	}
}

func TestCapabilitiesBeyondR4(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// SubscriptionStatus is an R4B type that R4's code set lacks.
		body := `{"resourceType":"CapabilityStatement","status":"active","date":"2026-01-01","kind":"instance","fhirVersion":"4.0.1","format":["json"],
"rest":[{"mode":"server","interaction":[{"code":"transaction"}],"resource":[
{"type":"CarePlan","interaction":[{"code":"update"},{"code":"search-type"}],"conditionalUpdate":true},
{"type":"SubscriptionStatus","interaction":[{"code":"read"}]}]}]}`
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
		c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
		caps, err := c.Capabilities(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !caps.Resources["CarePlan"].ConditionalUpdate || !caps.Supports("CarePlan", "update") || !caps.Transaction || caps.FHIRVersion != "4.0.1" {
			t.Errorf("capabilities: %+v", caps)
		}
	})
}
