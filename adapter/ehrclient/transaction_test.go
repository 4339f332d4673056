package ehrclient

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/treatment"
)

// txBundle stands for the body of a transaction: the client sends it as is.
const txBundle = `{"resourceType":"Bundle","type":"transaction","entry":[]}`

// txAnswer is an EHR's transaction-response to txBundle.
const txAnswer = `{"resourceType":"Bundle","type":"transaction-response","entry":[]}`

// txAttempt is what the fake EHR saw of one attempt.
type txAttempt struct {
	Method      string
	URL         string
	Path        string
	ContentType string
	Body        string
}

// txRecorder answers status to the first n requests, then 200 with txAnswer,
// and records every attempt.
type txRecorder struct {
	mu       sync.Mutex
	n        int
	status   int
	attempts []txAttempt
}

func (h *txRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.attempts = append(h.attempts, txAttempt{r.Method, r.URL.String(), r.URL.Path, r.Header.Get("Content-Type"), string(b)})
	fail := len(h.attempts) <= h.n
	h.mu.Unlock()
	if fail {
		w.WriteHeader(h.status)
		io.WriteString(w, operationOutcome)
		return
	}
	w.Header().Set("Content-Type", FHIRJSON)
	io.WriteString(w, txAnswer)
}

func (h *txRecorder) seen() []txAttempt {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]txAttempt(nil), h.attempts...)
}

// txAt is the attempt a transaction to the base URL should make.
var txAt = txAttempt{http.MethodPost, testBase, "/fhir", FHIRJSON, txBundle}

func TestTransactionIdempotentRetried(t *testing.T) {
	for _, status := range []int{429, 502, 503, 504} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := &txRecorder{n: 1, status: status}
				c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
				resp, err := c.Transaction(t.Context(), []byte(txBundle), true)
				if err != nil {
					t.Fatalf("Transaction: %v", err)
				}
				if diff := cmp.Diff([]any{200, txAnswer}, []any{resp.Status, string(resp.Body)}); diff != "" {
					t.Errorf("status, body (-want +got):\n%s", diff)
				}
				// Both attempts: POST to exactly the base URL (no trailing
				// slash), the same Bundle, as FHIR JSON.
				if diff := cmp.Diff([]txAttempt{txAt, txAt}, h.seen()); diff != "" {
					t.Errorf("attempts (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestTransactionIdempotentRetriedOnConnectionError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		h := &txRecorder{}
		ok := handlerTransport(h)
		rt := refusedFirst(&hits, 1, ok)
		c, _ := newTestClient(t, testEndpoint(), rt)
		resp, err := c.Transaction(t.Context(), []byte(txBundle), true)
		if err != nil {
			t.Fatalf("Transaction: %v", err)
		}
		if diff := cmp.Diff([]int{200, 2}, []int{resp.Status, hits.get()}); diff != "" {
			t.Errorf("status, attempts (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]txAttempt{txAt}, h.seen()); diff != "" {
			t.Errorf("attempt that reached the EHR (-want +got):\n%s", diff)
		}
	})
}

func TestTransactionNotIdempotentNeverRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &txRecorder{n: 1, status: http.StatusServiceUnavailable}
		c, _ := newTestClient(t, testEndpoint(), handlerTransport(h))
		resp, err := c.Transaction(t.Context(), []byte(txBundle), false)
		if err != nil {
			t.Fatalf("Transaction: %v", err)
		}
		if diff := cmp.Diff([]any{503, operationOutcome}, []any{resp.Status, string(resp.Body)}); diff != "" {
			t.Errorf("status, body (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]txAttempt{txAt}, h.seen()); diff != "" {
			t.Errorf("attempts (-want +got):\n%s", diff)
		}
	})
}

func TestTransactionNotIdempotentConnectionErrorNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		rt := refusedFirst(&hits, 0, nil)
		c, _ := newTestClient(t, testEndpoint(), rt)
		_, err := c.Transaction(t.Context(), []byte(txBundle), false)
		if got := treatment.ErrorKind(err); got != treatment.KindUnavailable {
			t.Errorf("error kind %q (%v), want unavailable", got, err)
		}
		if hits.get() != 1 {
			t.Errorf("%d attempts, want 1", hits.get())
		}
	})
}

func TestParseTransactionResponse(t *testing.T) {
	const answer = `{"resourceType":"Bundle","id":"r1","type":"transaction-response","entry":[
 {"response":{"status":"201 Created","location":"Appointment/123/_history/2"}},
 {"response":{"status":"200 OK","location":"https://ehr.example/fhir/CarePlan/abc/_history/1"}},
 {"response":{"status":"200 OK","location":"Goal/g9","etag":"W/\"7\""}},
 {"resource":{"resourceType":"Observation","id":"o5","meta":{"versionId":"3"},"status":"final"},
  "response":{"status":"201"}},
 {"resource":{"resourceType":"Observation","id":"not-a-goal","meta":{"versionId":"4"}},
  "response":{"status":" 200 OK "}},
 {"resource":{"resourceType":"Goal","id":"g3","meta":{"versionId":"5"}},
  "response":{"status":"200 OK","location":"Appointment/123/_history/2"}}]}`
	got, err := ParseTransactionResponse([]byte(answer), []string{"Appointment", "CarePlan", "Goal", "Observation", "Goal", "Goal"})
	if err != nil {
		t.Fatalf("ParseTransactionResponse: %v", err)
	}
	want := []EntryResponse{
		{Status: 201, Location: "Appointment/123/_history/2", ID: "123", VersionID: "2"},
		{Status: 200, Location: "https://ehr.example/fhir/CarePlan/abc/_history/1", ID: "abc", VersionID: "1"},
		{Status: 200, Location: "Goal/g9", ID: "g9", VersionID: "7"},
		{Status: 201, ID: "o5", VersionID: "3"},
		// A returned resource of another type than the entry's says nothing.
		{Status: 200},
		// Nor does another type's location: id and version from the resource.
		{Status: 200, Location: "Appointment/123/_history/2", ID: "g3", VersionID: "5"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("responses (-want +got):\n%s", diff)
	}
}

func TestParseTransactionResponseErrors(t *testing.T) {
	const ok201 = `{"response":{"status":"201 Created","location":"Goal/g1/_history/1"}}`
	for _, tc := range []struct {
		name, body string
		types      []string
	}{
		{"not JSON", `<html>gateway</html>`, []string{"Goal"}},
		{"not a Bundle", operationOutcome, []string{"Goal"}},
		{"no type", `{"resourceType":"Bundle","entry":[` + ok201 + `]}`, []string{"Goal"}},
		{"batch-response", `{"resourceType":"Bundle","type":"batch-response","entry":[` + ok201 + `]}`, []string{"Goal"}},
		{"the request itself", `{"resourceType":"Bundle","type":"transaction","entry":[` + ok201 + `]}`, []string{"Goal"}},
		{"fewer responses", `{"resourceType":"Bundle","type":"transaction-response","entry":[` + ok201 + `]}`, []string{"Goal", "Goal"}},
		{"more responses", `{"resourceType":"Bundle","type":"transaction-response","entry":[` + ok201 + `,` + ok201 + `]}`, []string{"Goal"}},
		{"no entries", `{"resourceType":"Bundle","type":"transaction-response"}`, []string{"Goal"}},
		{"status without code", `{"resourceType":"Bundle","type":"transaction-response","entry":[{"response":{"status":"Created"}}]}`, []string{"Goal"}},
		{"empty status", `{"resourceType":"Bundle","type":"transaction-response","entry":[{"response":{"location":"Goal/g1"}}]}`, []string{"Goal"}},
		{"second entry's status", `{"resourceType":"Bundle","type":"transaction-response","entry":[` + ok201 + `,{"response":{"status":"2O1 Created"}}]}`, []string{"Goal", "Goal"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := ParseTransactionResponse([]byte(tc.body), tc.types); err == nil {
				t.Errorf("accepted: %+v", got)
			}
		})
	}
}

func TestIDFromLocation(t *testing.T) {
	for _, tc := range []struct{ typ, loc, want string }{
		{"Appointment", "Appointment/123", "123"},
		{"Appointment", "Appointment/123/_history/2", "123"},
		{"Appointment", "/Appointment/123/_history/2", "123"},
		{"CarePlan", "https://ehr.example/fhir/CarePlan/abc", "abc"},
		{"CarePlan", "https://ehr.example/fhir/CarePlan/abc/_history/1", "abc"},
		{"CarePlan", "https://ehr.example/fhir/CarePlan/abc/", "abc"},
		{"Goal", "Goal/g1?_format=json", "g1"},
		{"Goal", "Goal/g1/_history/3?_format=json", "g1"},
		{"Goal", "https://ehr.example/fhir/Goal/g1/_history/3?x=Goal/other", "g1"},
		{"Goal", "", ""},
		{"Goal", "Goal", ""},
		{"Goal", "?x=Goal/g1", ""},
		{"Goal", "Appointment/123/_history/2", ""},
		{"Goal", "https://ehr.example/fhir/Appointment/123", ""},
		{"CarePlan", "https://ehr.example/fhir/", ""},
		// Another type's location whose id, or the base path, is the type's name.
		{"Goal", "Appointment/Goal/_history/2", ""},
		{"Goal", "https://ehr.example/Goal/fhir/Appointment/1", ""},
		{"Goal", "https://ehr.example/Goal/fhir/Goal/g2/_history/1", "g2"},
	} {
		if got := IDFromLocation(tc.typ, tc.loc); got != tc.want {
			t.Errorf("IDFromLocation(%q, %q) = %q, want %q", tc.typ, tc.loc, got, tc.want)
		}
	}
}
