package auth

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/treatment"
)

func TestClientValidate(t *testing.T) {
	good := func() Client {
		return Client{
			ID:     "ehr-1",
			Name:   "Test EHR",
			JWKS:   jwksJSON(jwkJSON(rsaKid, &rsaKey().PublicKey, map[string]any{"alg": "RS384", "use": "sig"}), jwkJSON(ecKid, &ecKey().PublicKey, map[string]any{"alg": "ES384", "key_ops": []string{"verify"}})),
			Scopes: []string{"system/*.rs", "system/CarePlan.read"},
			Role:   RoleEHR,
		}
	}
	priv := func(k map[string]any) map[string]any { k["d"] = "c2VjcmV0"; return k }
	tests := []struct {
		name   string
		mod    func(c *Client)
		fields []treatment.FieldError
	}{
		{name: "valid", mod: func(c *Client) {}},
		{name: "valid with jwksUrl", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "https://ehr.test/.well-known/jwks.json" }},
		{name: "valid with loopback http jwksUrl", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "http://127.0.0.1:8080/jwks" }},
		{name: "valid, JSON null jwks", mod: func(c *Client) { c.JWKS, c.JWKSURL = json.RawMessage("null"), "https://ehr.test/jwks" }},
		{name: "enc keys and unknown kty are skipped", mod: func(c *Client) {
			c.JWKS = jwksJSON(jwkJSON("enc", &rsaKey().PublicKey, map[string]any{"use": "enc"}), map[string]any{"kty": "OKP", "crv": "Ed25519", "x": "AA"}, jwkJSON(ecKid, &ecKey().PublicKey, nil))
		}},
		{
			name: "everything wrong",
			mod: func(c *Client) {
				c.ID = "-bad id"
				c.JWKS, c.JWKSURL = nil, ""
				c.Scopes = []string{"patient/*.rs", "system/*.x"}
				c.Role = "root"
			},
			fields: []treatment.FieldError{
				{Field: "id", Reason: "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"},
				{Field: "jwks", Reason: "one of jwks or jwksUrl is required"},
				{Field: "scopes[0]", Reason: `"patient/*.rs": patient/ scopes are not available to backend services: use system/`},
				{Field: "scopes[1]", Reason: `"system/*.x": permissions must be a subset of c, r, u, d, s in that order, or read, write or *`},
				{Field: "role", Reason: "must be one of ehr, clinic, admin, auditor"},
			},
		},
		{name: "both jwks and jwksUrl", mod: func(c *Client) { c.JWKSURL = "https://ehr.test/jwks" },
			fields: []treatment.FieldError{{Field: "jwks", Reason: "set either jwks or jwksUrl, not both"}}},
		{name: "no scopes", mod: func(c *Client) { c.Scopes = nil },
			fields: []treatment.FieldError{{Field: "scopes", Reason: "at least one scope is required"}}},
		{name: "http jwksUrl", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "http://ehr.test/jwks" },
			fields: []treatment.FieldError{{Field: "jwksUrl", Reason: "must use https (http is allowed only to loopback addresses)"}}},
		{name: "metadata jwksUrl", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "https://169.254.169.254/latest" },
			fields: []treatment.FieldError{{Field: "jwksUrl", Reason: "must not be a link-local address (this range holds cloud metadata services)"}}},
		{name: "relative jwksUrl", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "/jwks" },
			fields: []treatment.FieldError{{Field: "jwksUrl", Reason: "must be an absolute https URL"}}},
		{name: "jwksUrl with credentials", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "https://u:p@ehr.test/jwks" },
			fields: []treatment.FieldError{{Field: "jwksUrl", Reason: "must not hold credentials"}}},
		{name: "ftp jwksUrl", mod: func(c *Client) { c.JWKS, c.JWKSURL = nil, "ftp://ehr.test/jwks" },
			fields: []treatment.FieldError{{Field: "jwksUrl", Reason: "must use https"}}},
		{name: "jwks not JSON", mod: func(c *Client) { c.JWKS = json.RawMessage(`{"keys":`) },
			fields: []treatment.FieldError{{Field: "jwks", Reason: "is not a JSON Web Key Set (a JSON object with a keys array)"}}},
		{name: "jwks without keys", mod: func(c *Client) { c.JWKS = json.RawMessage(`{}`) },
			fields: []treatment.FieldError{{Field: "jwks", Reason: "has no keys array"}}},
		{name: "jwks with no usable key", mod: func(c *Client) { c.JWKS = jwksJSON(jwkJSON("enc", &rsaKey().PublicKey, map[string]any{"use": "enc"})) },
			fields: []treatment.FieldError{{Field: "jwks", Reason: "must hold at least one signature key usable with RS384 (RSA, 2048 bits or more) or ES384 (EC P-384)"}}},
		{
			name: "bad keys",
			mod: func(c *Client) {
				c.JWKS = jwksJSON(
					jwkJSON("small", &smallRSAKey().PublicKey, nil),
					jwkJSON("p256", &p256Key().PublicKey, nil),
					priv(jwkJSON("priv", &ecKey().PublicKey, nil)),
					map[string]any{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
					jwkJSON("", &ecKey().PublicKey, nil),
					jwkJSON("rs256", &rsaKey().PublicKey, map[string]any{"alg": "RS256"}),
					jwkJSON("es", &ecKey().PublicKey, map[string]any{"alg": "RS384"}),
					jwkJSON(ecKid, &ecKey().PublicKey, nil),
					jwkJSON(ecKid, &otherECKey().PublicKey, nil),
					map[string]any{"kty": "EC", "kid": "offcurve", "crv": "P-384", "x": b64.EncodeToString(make([]byte, 48)), "y": b64.EncodeToString(make([]byte, 48))},
					map[string]any{"kty": "EC", "kid": "short", "crv": "P-384", "x": "AQ", "y": "AQ"},
					map[string]any{"kty": "RSA", "kid": "bad-e", "n": jwkJSON("", &rsaKey().PublicKey, nil)["n"], "e": "AAE"},
					map[string]any{"kty": "RSA", "kid": "bad-n", "n": "!!", "e": "AQAB"},
					"not an object",
				)
			},
			fields: []treatment.FieldError{
				{Field: "jwks.keys[0]", Reason: "RSA key must have 2048 to 8192 bits"},
				{Field: "jwks.keys[1]", Reason: "crv must be P-384 (ES384 signs with P-384)"},
				{Field: "jwks.keys[2]", Reason: "holds private key material: publish the public key only"},
				{Field: "jwks.keys[3]", Reason: "is a symmetric key: a JWKS must hold public keys only"},
				{Field: "jwks.keys[4]", Reason: "kid is required (client assertions name their key by kid)"},
				{Field: "jwks.keys[5]", Reason: "alg must be RS384 for an RSA key"},
				{Field: "jwks.keys[6]", Reason: "alg must be ES384 for an EC key"},
				{Field: "jwks.keys[8]", Reason: "kid is used by another key of this set"},
				{Field: "jwks.keys[9]", Reason: "x and y are not a point on P-384"},
				{Field: "jwks.keys[10]", Reason: "x and y must be base64url-encoded 48-byte P-384 coordinates"},
				{Field: "jwks.keys[11]", Reason: "e must be an odd public exponent of at least 3"},
				{Field: "jwks.keys[12]", Reason: "n must be the base64url-encoded modulus"},
				{Field: "jwks.keys[13]", Reason: "is not a JSON Web Key"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.mod(&c)
			err := c.Validate()
			var got []treatment.FieldError
			if err != nil {
				var te *treatment.Error
				if !errors.As(err, &te) || te.Kind != treatment.KindInvalid {
					t.Fatalf("Validate() = %v, want a treatment invalid error", err)
				}
				got = te.Fields
			}
			if diff := cmp.Diff(tt.fields, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClientAllowedScopes(t *testing.T) {
	c := Client{Scopes: []string{"system/Patient.read", "system/*.s"}}
	got, err := c.AllowedScopes()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Scope{{"*", PermSearch}, {"Patient", PermRead}}, got); diff != "" {
		t.Errorf("AllowedScopes (-want +got):\n%s", diff)
	}
}
