package ehrtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
)

const (
	sys = "urn:uuid:6f1c2d1e-0000-4000-8000-000000000001"

	patientP1 = `{"resourceType":"Patient","identifier":[{"system":"` + sys + `","value":"p1"}],"gender":"female"}`
	patientP2 = `{"resourceType":"Patient","identifier":[{"system":"` + sys + `","value":"p2"}],"gender":"female"}`
	patientP3 = `{"resourceType":"Patient","identifier":[{"system":"` + sys + `","value":"p3"}],"gender":"male"}`
	// Patient has no "nickname".
	patientInvalid = `{"resourceType":"Patient","nickname":"x"}`
)

// answer is one HTTP exchange with the EHR.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request on a fresh connection (no keep-alive, so Go's transport
// never silently retries on a reused connection) and returns the answer or
// the transport error.
func do(ctx context.Context, method, target, body string, header map[string]string) (answer, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, r)
	if err != nil {
		return answer{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// mustDo is do that fails t on a transport error.
func mustDo(t *testing.T, method, target, body string, header map[string]string) answer {
	t.Helper()
	a, err := do(t.Context(), method, target, body, header)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return a
}

// resource is the part of a FHIR resource the tests look at.
type resource struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Gender       string `json:"gender"`
	Meta         struct {
		VersionID string `json:"versionId"`
	} `json:"meta"`
	Issue []struct {
		Severity string `json:"severity"`
		Code     string `json:"code"`
	} `json:"issue"`
	Total int `json:"total"`
}

func decode(t *testing.T, b []byte) resource {
	t.Helper()
	var r resource
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("decoding %q: %v", b, err)
	}
	return r
}

// wantOutcome checks that a is an OperationOutcome error with status.
func wantOutcome(t *testing.T, a answer, status int) resource {
	t.Helper()
	r := decode(t, a.body)
	if a.status != status || r.ResourceType != "OperationOutcome" || len(r.Issue) == 0 || r.Issue[0].Severity != "error" {
		t.Fatalf("got %d %s, want %d with an error OperationOutcome", a.status, a.body, status)
	}
	return r
}

func q(identifier string) string { return url.QueryEscape(sys + "|" + identifier) }

func TestFHIR(t *testing.T) {
	e := Start(t, Options{})

	t.Run("metadata", func(t *testing.T) {
		a := mustDo(t, "GET", e.BaseURL+"/metadata", "", nil)
		var cs struct {
			ResourceType string `json:"resourceType"`
			FHIRVersion  string `json:"fhirVersion"`
			Rest         []struct {
				Interaction []struct{ Code string } `json:"interaction"`
				Resource    []struct {
					Type              string `json:"type"`
					UpdateCreate      bool   `json:"updateCreate"`
					ConditionalCreate bool   `json:"conditionalCreate"`
					ConditionalUpdate bool   `json:"conditionalUpdate"`
				} `json:"resource"`
			} `json:"rest"`
		}
		if err := json.Unmarshal(a.body, &cs); err != nil || a.status != 200 {
			t.Fatalf("metadata: %d %v", a.status, err)
		}
		if cs.ResourceType != "CapabilityStatement" || cs.FHIRVersion != "4.0.1" || len(cs.Rest) != 1 {
			t.Fatalf("metadata: %s %s, %d rest", cs.ResourceType, cs.FHIRVersion, len(cs.Rest))
		}
		var sys []string
		for _, i := range cs.Rest[0].Interaction {
			sys = append(sys, i.Code)
		}
		if diff := cmp.Diff([]string{"transaction", "batch"}, sys); diff != "" {
			t.Errorf("system interactions (-want +got):\n%s", diff)
		}
		found := false
		for _, r := range cs.Rest[0].Resource {
			if r.Type == "Appointment" {
				found = r.UpdateCreate && r.ConditionalCreate && r.ConditionalUpdate
			}
		}
		if !found {
			t.Error("Appointment does not advertise updateCreate, conditionalCreate and conditionalUpdate")
		}
	})

	t.Run("smart configuration", func(t *testing.T) {
		a := mustDo(t, "GET", e.BaseURL+"/.well-known/smart-configuration", "", nil)
		var got struct {
			TokenEndpoint string   `json:"token_endpoint"`
			Grants        []string `json:"grant_types_supported"`
			AuthMethods   []string `json:"token_endpoint_auth_methods_supported"`
			Algs          []string `json:"token_endpoint_auth_signing_alg_values_supported"`
		}
		if err := json.Unmarshal(a.body, &got); err != nil || a.status != 200 {
			t.Fatalf("smart-configuration: %d %v", a.status, err)
		}
		want := got
		want.TokenEndpoint = e.TokenURL
		want.Grants = []string{"client_credentials"}
		want.AuthMethods = []string{"private_key_jwt"}
		want.Algs = []string{"RS384", "ES384"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("smart-configuration (-want +got):\n%s", diff)
		}
	})

	t.Run("create and read", func(t *testing.T) {
		e.Reset(t)
		a := mustDo(t, "POST", e.BaseURL+"/Patient", patientP1, nil)
		created := decode(t, a.body)
		if a.status != 201 || created.ID == "" || created.Meta.VersionID == "" {
			t.Fatalf("create: %d %s", a.status, a.body)
		}
		wantLoc := e.BaseURL + "/Patient/" + created.ID + "/_history/" + created.Meta.VersionID
		if got := a.header.Get("Location"); got != wantLoc {
			t.Errorf("Location = %q, want %q", got, wantLoc)
		}
		if got, want := a.header.Get("ETag"), `W/"`+created.Meta.VersionID+`"`; got != want {
			t.Errorf("ETag = %q, want %q", got, want)
		}
		a = mustDo(t, "GET", e.BaseURL+"/Patient/"+created.ID, "", nil)
		if a.status != 200 || decode(t, a.body).ID != created.ID {
			t.Errorf("read: %d %s", a.status, a.body)
		}
		wantOutcome(t, mustDo(t, "GET", e.BaseURL+"/Patient/nope", "", nil), 404)
	})

	t.Run("conditional update creates then updates", func(t *testing.T) {
		e.Reset(t)
		target := e.BaseURL + "/Patient?identifier=" + q("p3")
		first := mustDo(t, "PUT", target, patientP3, nil)
		second := mustDo(t, "PUT", target, strings.Replace(patientP3, `"male"`, `"female"`, 1), nil)
		if first.status != 201 || second.status != 200 {
			t.Fatalf("statuses %d, %d; want 201, 200", first.status, second.status)
		}
		r1, r2 := decode(t, first.body), decode(t, second.body)
		if r1.ID != r2.ID || r1.Meta.VersionID == r2.Meta.VersionID || r2.Gender != "female" {
			t.Errorf("update did not replace the same resource: %s then %s", first.body, second.body)
		}
		if n := e.Count(t, "Patient", sys, "p3"); n != 1 {
			t.Errorf("Count = %d, want 1", n)
		}
	})

	t.Run("If-None-Exist does not duplicate", func(t *testing.T) {
		e.Reset(t)
		h := map[string]string{"If-None-Exist": "identifier=" + sys + "|p1"}
		first := mustDo(t, "POST", e.BaseURL+"/Patient", patientP1, h)
		second := mustDo(t, "POST", e.BaseURL+"/Patient", patientP1, h)
		if first.status != 201 || second.status != 200 {
			t.Fatalf("statuses %d, %d; want 201, 200", first.status, second.status)
		}
		if n := e.Count(t, "Patient", sys, "p1"); n != 1 {
			t.Errorf("Count = %d, want 1", n)
		}
	})

	t.Run("If-Match", func(t *testing.T) {
		e.Reset(t)
		created := decode(t, mustDo(t, "POST", e.BaseURL+"/Patient", patientP1, nil).body)
		body := strings.Replace(patientP1, `{"resourceType":"Patient",`, `{"resourceType":"Patient","id":"`+created.ID+`",`, 1)
		target := e.BaseURL + "/Patient/" + created.ID
		wantOutcome(t, mustDo(t, "PUT", target, body, map[string]string{"If-Match": `W/"stale"`}), 412)
		a := mustDo(t, "PUT", target, body, map[string]string{"If-Match": `W/"` + created.Meta.VersionID + `"`})
		if a.status != 200 {
			t.Errorf("matching If-Match: %d %s", a.status, a.body)
		}
	})

	t.Run("update as create", func(t *testing.T) {
		e.Reset(t)
		body := strings.Replace(patientP2, `{"resourceType":"Patient",`, `{"resourceType":"Patient","id":"client-id-1",`, 1)
		if a := mustDo(t, "PUT", e.BaseURL+"/Patient/client-id-1", body, nil); a.status != 201 {
			t.Errorf("update as create: %d %s", a.status, a.body)
		}
		if a := mustDo(t, "PUT", e.BaseURL+"/Patient/client-id-1", body, nil); a.status != 200 {
			t.Errorf("update: %d %s", a.status, a.body)
		}
	})

	t.Run("invalid resources are refused", func(t *testing.T) {
		e.Reset(t)
		tests := []struct {
			name, method, path, body string
		}{
			{"create", "POST", "/Patient", patientInvalid},
			{"conditional update", "PUT", "/Patient?identifier=" + q("p9"), patientInvalid},
			{"wrong type", "POST", "/Patient", `{"resourceType":"Appointment"}`},
			{"not JSON", "POST", "/Patient", `{`},
			{"transaction entry", "POST", "", `{"resourceType":"Bundle","type":"transaction","entry":[` +
				`{"resource":` + patientP1 + `,"request":{"method":"POST","url":"Patient"}},` +
				`{"resource":` + patientInvalid + `,"request":{"method":"POST","url":"Patient"}}]}`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				wantOutcome(t, mustDo(t, tt.method, e.BaseURL+tt.path, tt.body, nil), 400)
			})
		}
		if n := e.Count(t, "Patient", "", ""); n != 0 {
			t.Errorf("%d Patients stored after refused writes (failed transaction not rolled back?)", n)
		}
	})

	t.Run("unknown search parameters are refused", func(t *testing.T) {
		tests := []string{
			"Patient?nickname=x",
			"Appointment?_sort=bogus",
			"Appointment?patient:Patient.nickname=x",
			"Appointment?_include=Appointment:bogus",
		}
		for _, query := range tests {
			wantOutcome(t, mustDo(t, "GET", e.BaseURL+"/"+query, "", nil), 400)
		}
		for _, query := range []string{"Patient?identifier=" + q("p1"), "Appointment?patient=Patient/x&_count=5&_sort=-date"} {
			if a := mustDo(t, "GET", e.BaseURL+"/"+query, "", nil); a.status != 200 {
				t.Errorf("%s: %d %s", query, a.status, a.body)
			}
		}
		wantOutcome(t, mustDo(t, "PUT", e.BaseURL+"/Patient?bogus=1", patientP1, nil), 400)
	})

	t.Run("transaction", func(t *testing.T) {
		e.Reset(t)
		bundle := `{"resourceType":"Bundle","type":"transaction","entry":[` +
			`{"fullUrl":"urn:uuid:0b9f7c8e-1111-4a2b-9c3d-000000000001","resource":` + patientP1 +
			`,"request":{"method":"PUT","url":"Patient?identifier=` + sys + `|p1"}},` +
			`{"resource":{"resourceType":"Appointment","status":"booked","start":"2026-11-20T15:00:00Z","end":"2026-11-20T17:00:00Z",` +
			`"identifier":[{"system":"` + sys + `","value":"a1"}],` +
			`"participant":[{"actor":{"reference":"urn:uuid:0b9f7c8e-1111-4a2b-9c3d-000000000001"},"status":"accepted"}]},` +
			`"request":{"method":"POST","url":"Appointment","ifNoneExist":"identifier=` + sys + `|a1"}}]}`
		for i := range 2 {
			a := mustDo(t, "POST", e.BaseURL, bundle, nil)
			var got struct {
				Type  string `json:"type"`
				Entry []struct {
					Response struct {
						Status string `json:"status"`
					} `json:"response"`
				} `json:"entry"`
			}
			if err := json.Unmarshal(a.body, &got); err != nil || a.status != 200 {
				t.Fatalf("transaction %d: %d %s", i, a.status, a.body)
			}
			var statuses []string
			for _, en := range got.Entry {
				statuses = append(statuses, en.Response.Status)
			}
			want := []string{"201", "201"}
			if i == 1 {
				want = []string{"200", "200"}
			}
			if diff := cmp.Diff(want, statuses); diff != "" {
				t.Errorf("transaction %d statuses (-want +got):\n%s", i, diff)
			}
		}
		if n := e.Count(t, "Appointment", sys, "a1"); n != 1 {
			t.Errorf("Appointments = %d, want 1", n)
		}
		if got := decode(t, e.Search(t, "Appointment?identifier="+q("a1")+"&_include=Appointment:patient")); got.Total != 1 {
			t.Errorf("Search total = %d, want 1", got.Total)
		}
	})

	t.Run("admin FHIR bypasses faults", func(t *testing.T) {
		e.Reset(t)
		e.SetFaults(t, Faults{Down: true, RejectIdentifiers: []string{"p1"}})
		t.Cleanup(func() { e.ClearFaults(t) })
		if status, body := e.AdminFHIR(t, "POST", "Patient", []byte(patientP1)); status != 201 {
			t.Fatalf("admin create: %d %s", status, body)
		}
		if status, _ := e.AdminFHIR(t, "POST", "Patient", []byte(patientInvalid)); status != 400 {
			t.Errorf("admin create of an invalid Patient: %d, want 400", status)
		}
		if n := e.Count(t, "Patient", sys, "p1"); n != 1 {
			t.Errorf("Count = %d, want 1", n)
		}
		if got := e.Requests(t); len(got) != 0 {
			t.Errorf("admin requests were logged: %+v", got)
		}
	})
}

// signer signs client assertions for one registered key.
type signer struct {
	method jwt.SigningMethod
	key    any
	kid    string
}

func assertion(t *testing.T, s signer, clientID, aud, jti string) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, jwt.RegisteredClaims{
		Issuer:    clientID,
		Subject:   clientID,
		Audience:  jwt.ClaimStrings{aud},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(4 * time.Minute)),
		ID:        jti,
	})
	tok.Header["kid"] = s.kid
	signed, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func tokenRequest(t *testing.T, e *EHR, clientAssertion, scope string) answer {
	t.Helper()
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {clientAssertion},
		"scope":                 {scope},
	}
	req, err := http.NewRequestWithContext(t.Context(), "POST", e.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
}

func decodeToken(t *testing.T, a answer) tokenAnswer {
	t.Helper()
	var tok tokenAnswer
	if err := json.Unmarshal(a.body, &tok); err != nil {
		t.Fatalf("token answer %d %q: %v", a.status, a.body, err)
	}
	return tok
}

func TestAuth(t *testing.T) {
	e := Start(t, Options{Auth: true, TokenLifetime: time.Minute})
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const clientID = "kapfhir-test"
	e.RegisterClient(t, clientID, "rsa-1", rsaKey.Public())
	e.RegisterClient(t, clientID, "ec-1", ecKey.Public())
	rs := signer{jwt.SigningMethodRS384, rsaKey, "rsa-1"}
	es := signer{jwt.SigningMethodES384, ecKey, "ec-1"}
	const scope = "system/Patient.cruds system/Appointment.cruds"

	if a := mustDo(t, "GET", e.BaseURL+"/metadata", "", nil); a.status != 200 {
		t.Errorf("metadata needs no token: got %d", a.status)
	}
	a := mustDo(t, "GET", e.BaseURL+"/Patient", "", nil)
	wantOutcome(t, a, 401)
	if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("401 without a Bearer challenge: %q", a.header.Get("WWW-Authenticate"))
	}

	for _, s := range []signer{rs, es} {
		t.Run(s.method.Alg(), func(t *testing.T) {
			jti := "jti-" + s.kid
			a := tokenRequest(t, e, assertion(t, s, clientID, e.TokenURL, jti), scope)
			tok := decodeToken(t, a)
			if a.status != 200 || tok.AccessToken == "" {
				t.Fatalf("token: %d %s", a.status, a.body)
			}
			if diff := cmp.Diff(tokenAnswer{AccessToken: tok.AccessToken, TokenType: "bearer", ExpiresIn: 60, Scope: scope}, tok); diff != "" {
				t.Errorf("token answer (-want +got):\n%s", diff)
			}
			bearer := map[string]string{"Authorization": "Bearer " + tok.AccessToken}
			if a := mustDo(t, "GET", e.BaseURL+"/Patient", "", bearer); a.status != 200 {
				t.Errorf("search with token: %d %s", a.status, a.body)
			}
			wantOutcome(t, mustDo(t, "GET", e.BaseURL+"/Observation", "", bearer), 403)

			replay := tokenRequest(t, e, assertion(t, s, clientID, e.TokenURL, jti), scope)
			if got := decodeToken(t, replay); replay.status != 400 || got.Error != "invalid_grant" {
				t.Errorf("replayed jti: %d %s, want 400 invalid_grant", replay.status, replay.body)
			}
		})
	}

	t.Run("refused assertions", func(t *testing.T) {
		wrongKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		hs := jwt.NewWithClaims(jwt.SigningMethodHS384, jwt.RegisteredClaims{
			Issuer: clientID, Subject: clientID, Audience: jwt.ClaimStrings{e.TokenURL},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute)), ID: "hs",
		})
		hs.Header["kid"] = "rsa-1"
		hsSigned, err := hs.SignedString([]byte("shared-secret-is-not-allowed"))
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name, assertion, scope, wantError string
		}{
			{"wrong aud", assertion(t, rs, clientID, e.BaseURL, "aud"), scope, "invalid_client"},
			{"unknown kid", assertion(t, signer{jwt.SigningMethodES384, ecKey, "nope"}, clientID, e.TokenURL, "kid"), scope, "invalid_client"},
			{"unknown client", assertion(t, rs, "someone-else", e.TokenURL, "client"), scope, "invalid_client"},
			{"wrong key", assertion(t, signer{jwt.SigningMethodES384, wrongKey, "ec-1"}, clientID, e.TokenURL, "key"), scope, "invalid_client"},
			{"HS384", hsSigned, scope, "invalid_client"},
			{"bad scope", assertion(t, rs, clientID, e.TokenURL, "scope"), "patient/*.read", "invalid_scope"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				a := tokenRequest(t, e, tt.assertion, tt.scope)
				if got := decodeToken(t, a); a.status != 400 || got.Error != tt.wantError || got.AccessToken != "" {
					t.Errorf("got %d %s, want 400 %s", a.status, a.body, tt.wantError)
				}
			})
		}
	})

	t.Run("expired token", func(t *testing.T) {
		tok := decodeToken(t, tokenRequest(t, e, assertion(t, rs, clientID, e.TokenURL, "expire"), scope))
		bearer := map[string]string{"Authorization": "Bearer " + tok.AccessToken}
		if a := mustDo(t, "GET", e.BaseURL+"/Patient", "", bearer); a.status != 200 {
			t.Fatalf("before expiry: %d", a.status)
		}
		e.ExpireTokens(t)
		wantOutcome(t, mustDo(t, "GET", e.BaseURL+"/Patient", "", bearer), 401)
	})

	t.Run("token lifetime", func(t *testing.T) {
		e.SetTokenLifetime(t, 5*time.Second)
		tok := decodeToken(t, tokenRequest(t, e, assertion(t, rs, clientID, e.TokenURL, "lifetime"), scope))
		if tok.ExpiresIn != 5 {
			t.Errorf("expires_in = %d, want 5", tok.ExpiresIn)
		}
	})
}

func TestFaults(t *testing.T) {
	e := Start(t, Options{})
	patients := e.BaseURL + "/Patient"

	t.Run("429 with Retry-After", func(t *testing.T) {
		e.SetFaults(t, Faults{Rate429: 1, RetryAfterSeconds: 7})
		t.Cleanup(func() { e.ClearFaults(t) })
		a := mustDo(t, "GET", patients, "", nil)
		wantOutcome(t, a, 429)
		if got := a.header.Get("Retry-After"); got != "7" {
			t.Errorf("Retry-After = %q, want 7", got)
		}
	})

	t.Run("503", func(t *testing.T) {
		e.SetFaults(t, Faults{Rate503: 1})
		t.Cleanup(func() { e.ClearFaults(t) })
		wantOutcome(t, mustDo(t, "POST", patients, patientP1, nil), 503)
	})

	for _, f := range []Faults{{RateReset: 1}, {Down: true}} {
		name := "reset"
		if f.Down {
			name = "down"
		}
		t.Run(name, func(t *testing.T) {
			e.Reset(t)
			e.SetFaults(t, f)
			t.Cleanup(func() { e.ClearFaults(t) })
			if a, err := do(t.Context(), "POST", patients, patientP1, nil); err == nil {
				t.Fatalf("got %d %s, want a transport error", a.status, a.body)
			}
			reqs := e.Requests(t)
			if len(reqs) != 1 || reqs[0].Status != 0 || reqs[0].Fault != name {
				t.Errorf("request log %+v, want one unanswered %s", reqs, name)
			}
			if n := e.Count(t, "Patient", "", ""); n != 0 {
				t.Errorf("%d Patients stored by an unanswered request", n)
			}
		})
	}

	t.Run("latency", func(t *testing.T) {
		e.SetFaults(t, Faults{LatencyMS: 1})
		t.Cleanup(func() { e.ClearFaults(t) })
		a := mustDo(t, "GET", patients, "", nil)
		if a.status != 200 || a.header.Get("X-Test-EHR-Latency-Ms") != "1" {
			t.Errorf("got %d with X-Test-EHR-Latency-Ms %q, want 200 and 1", a.status, a.header.Get("X-Test-EHR-Latency-Ms"))
		}
	})

	t.Run("rejected identifier", func(t *testing.T) {
		e.Reset(t)
		e.SetFaults(t, Faults{RejectIdentifiers: []string{"p2"}})
		t.Cleanup(func() { e.ClearFaults(t) })
		wantOutcome(t, mustDo(t, "PUT", patients+"?identifier="+q("p2"), patientP2, nil), 422)
		if a := mustDo(t, "PUT", patients+"?identifier="+q("p1"), patientP1, nil); a.status != 201 {
			t.Errorf("other identifier: %d %s", a.status, a.body)
		}
		if got := []int{e.Count(t, "Patient", sys, "p1"), e.Count(t, "Patient", sys, "p2")}; !cmp.Equal(got, []int{1, 0}) {
			t.Errorf("counts p1, p2 = %v, want [1 0]", got)
		}
	})

	t.Run("hang until cleared", func(t *testing.T) {
		e.SetFaults(t, Faults{Hang: true})
		t.Cleanup(func() { e.ClearFaults(t) })
		done := make(chan answer, 1)
		go func() {
			a, _ := do(context.Background(), "GET", patients, "", nil)
			done <- a
		}()
		e.WaitHung(t, 1)
		e.ClearFaults(t)
		if a := <-done; a.status != 200 {
			t.Errorf("released request: %d %s", a.status, a.body)
		}
	})

	t.Run("hang until the client leaves", func(t *testing.T) {
		e.SetFaults(t, Faults{Hang: true})
		t.Cleanup(func() { e.ClearFaults(t) })
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := do(ctx, "GET", patients, "", nil)
			done <- err
		}()
		e.WaitHung(t, 1)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("abandoned request: %v, want context.Canceled", err)
		}
	})

	t.Run("seeded rates are reproducible", func(t *testing.T) {
		run := func() []int {
			e.ClearRequests(t)
			e.SetFaults(t, Faults{Rate429: 0.3, Rate503: 0.3, Seed: 42})
			var statuses []int
			for range 20 {
				statuses = append(statuses, mustDo(t, "GET", patients, "", nil).status)
			}
			e.ClearFaults(t)
			return statuses
		}
		first, second := run(), run()
		if diff := cmp.Diff(first, second); diff != "" {
			t.Errorf("same seed, different faults (-first +second):\n%s", diff)
		}
		seen := map[int]bool{}
		for _, s := range first {
			seen[s] = true
		}
		if !seen[200] || !seen[429] || !seen[503] {
			t.Errorf("20 requests at 30%%/30%% gave statuses %v", first)
		}
		c := e.Counters(t)
		if c.ByRoute["GET Patient"] != 20 || c.ByStatus["429"]+c.ByStatus["503"]+c.ByStatus["200"] != 20 {
			t.Errorf("counters %+v", c)
		}
	})
}
