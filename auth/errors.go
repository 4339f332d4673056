package auth

import (
	"errors"
	"net/http"
)

// The OAuth 2.0 error codes the token endpoint uses (RFC 6749 section 5.2).
const (
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidClient        = "invalid_client"
	CodeInvalidScope         = "invalid_scope"
	CodeUnsupportedGrantType = "unsupported_grant_type"
)

// OAuthError is a refusal by the token endpoint. It is safe to show to the
// caller: Description says what was wrong but never echoes the assertion.
// Encode it with encoding/json as the response body, with Status as the HTTP
// status and "Cache-Control: no-store".
type OAuthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	Status      int    `json:"-"`
	// Err is the cause, for logs only (never a token).
	Err error `json:"-"`
	// ClientID is the client the request named or claimed to be (not
	// authenticated: for the audit record of the refusal), when known.
	ClientID string `json:"-"`
}

// Error is for logs: the code, the description and the cause.
func (e *OAuthError) Error() string {
	s := "oauth: " + e.Code
	if e.Description != "" {
		s += ": " + e.Description
	}
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

func (e *OAuthError) Unwrap() error { return e.Err }

// invalidClient is a failed client authentication: the assertion or the
// client is not acceptable (401).
func invalidClient(desc string) *OAuthError {
	return &OAuthError{Code: CodeInvalidClient, Description: desc, Status: http.StatusUnauthorized}
}

// invalidRequest is a malformed token request (400).
func invalidRequest(desc string) *OAuthError {
	return &OAuthError{Code: CodeInvalidRequest, Description: desc, Status: http.StatusBadRequest}
}

// invalidScope is a scope that cannot be granted (400).
func invalidScope(desc string) *OAuthError {
	return &OAuthError{Code: CodeInvalidScope, Description: desc, Status: http.StatusBadRequest}
}

// unsupportedGrantType is a grant other than client_credentials (400).
func unsupportedGrantType(desc string) *OAuthError {
	return &OAuthError{Code: CodeUnsupportedGrantType, Description: desc, Status: http.StatusBadRequest}
}

// AsOAuthError returns the *OAuthError in err's chain, if any. Any other error
// from the token endpoint is a server failure: answer 500 with a generic body
// and log err.
func AsOAuthError(err error) (*OAuthError, bool) {
	var e *OAuthError
	ok := errors.As(err, &e)
	return e, ok
}
