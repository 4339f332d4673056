package auth

import (
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
)

// FuzzClientAssertion sends arbitrary client assertions to the token
// endpoint: it never panics, never issues a token (no input can forge a
// signature by a registered key) and always answers with an OAuth error.
func FuzzClientAssertion(f *testing.F) {
	fx := newFixture(f)
	now := fx.clock.Now()
	// Well-formed assertions that are wrong in one way each.
	f.Add(sign(f, jwt.SigningMethodRS384, otherRSAKey(), rsaKid, goodClaims("ehr-1", now)))
	f.Add(sign(f, jwt.SigningMethodES384, otherECKey(), ecKid, goodClaims("ehr-1", now)))
	f.Add(sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, rsaKid, goodClaims("ehr-1", now)))
	f.Add(sign(f, jwt.SigningMethodHS384, []byte("secret"), rsaKid, goodClaims("ehr-1", now)))
	f.Fuzz(func(t *testing.T, assertion string) {
		got, err := fx.server.Token(t.Context(), form(assertion, "system/*.rs"))
		if diff := cmp.Diff(Issued{}, got); diff != "" {
			t.Fatalf("a token was issued (-want +got):\n%s", diff)
		}
		oe, ok := AsOAuthError(err)
		if !ok {
			t.Fatalf("error = %v, want an *OAuthError", err)
		}
		if oe.Code != CodeInvalidClient && oe.Code != CodeInvalidRequest {
			t.Fatalf("error code %s, want invalid_client or invalid_request", oe.Code)
		}
	})
}
