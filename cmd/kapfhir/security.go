package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/access"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/config"
	"github.com/kapfhir/kapfhir/store"
)

// openAccess starts the authorization server on the store: signing keys,
// configured clients, and the admin client on first start (reported on w).
// Its signing keys are sealed with svc's Box; svc names the installation.
func openAccess(ctx context.Context, cfg config.Config, st store.Store, issuer string, svc *app.Service, log *slog.Logger) (*access.Service, string, error) {
	var clients []auth.Client
	for _, c := range cfg.Auth.Clients {
		ac, err := c.Resolve()
		if err != nil {
			return nil, "", err
		}
		clients = append(clients, ac)
	}
	acc, err := access.New(ctx, access.Options{
		Store: st, Issuer: issuer, DataDir: cfg.DataDir, Source: svc.Installation(), Seal: svc.Seal(),
		TokenLifetime: cfg.Auth.TokenLifetime, Configured: clients, Logger: log,
	})
	if err != nil {
		return nil, "", err
	}
	path, err := acc.Bootstrap(ctx)
	if err != nil {
		return nil, "", err
	}
	note := ""
	if path != "" {
		log.Info("created the admin client", "client", access.AdminClientID)
		note = fmt.Sprintf("No API client was registered: created client %q (role admin).\n"+
			"Its private key is %s (mode 0600); keep it safe.\n"+
			"Get a token for curl with:  kapfhir token -client admin\n", access.AdminClientID, path)
	}
	return acc, note, nil
}

// issuerOf is the base URL tokens are issued for: the configured one, or
// the address the server listens on (https when TLS is configured).
func issuerOf(cfg config.Config, addr string) string {
	if cfg.BaseURL != "" {
		return strings.TrimSuffix(cfg.BaseURL, "/")
	}
	if cfg.TLS.Enabled() {
		return "https://" + addr
	}
	return "http://" + addr
}

// tokenCmd asks a running kapfhir for an access token with a client's key
// (by default the bootstrap admin's) and prints it.
func tokenCmd(ctx context.Context, cfg config.Config, clientID, keyFile, base, scope string, stdout io.Writer) error {
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, clientID+"-client.pem")
	}
	if base == "" {
		base = issuerOf(cfg, cfg.Listen)
	}
	key, kid, err := access.ClientKey(keyFile)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	if cfg.TLS.Enabled() {
		// kapfhir's own certificate is trusted besides the system's
		// authorities: a self-signed one is common on a clinic's network.
		roots, err := x509.SystemCertPool()
		if err != nil {
			roots = x509.NewCertPool()
		}
		if pem, err := os.ReadFile(cfg.TLS.CertFile); err == nil {
			roots.AppendCertsFromPEM(pem)
		}
		client.Transport = &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}}
	}
	tok, err := auth.RequestToken(ctx, client, strings.TrimSuffix(base, "/")+"/auth/token", clientID, key, kid, scope)
	if err != nil {
		return fmt.Errorf("token: is kapfhir running at %s? %w", base, err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// auditVerify checks the audit trail's hash chain.
func auditVerify(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	st, _, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	r, err := st.VerifyAudit(ctx)
	if err != nil {
		return err
	}
	if !r.Intact {
		fmt.Fprintf(stdout, "NOT INTACT: record %d: %s (%d records checked)\n", r.FirstBad, r.Reason, r.Records)
		return errors.New("audit trail verification failed")
	}
	fmt.Fprintf(stdout, "intact, %d records, head %s\n", r.Records, r.Head)
	return nil
}

// auditPrune deletes the audit records older than before (default: the
// configured retention), recording the prune, and verifies what is left.
func auditPrune(ctx context.Context, cfg config.Config, beforeArg string, stdout io.Writer) error {
	now := time.Now().UTC()
	before := now.Add(-cfg.Audit.Retention)
	switch {
	case beforeArg != "":
		t, err := time.Parse(time.RFC3339, beforeArg)
		if err != nil {
			if t, err = time.Parse(time.DateOnly, beforeArg); err != nil {
				return errors.New("audit prune: -before must be a date (2020-01-31) or an RFC 3339 time")
			}
		}
		before = t
	case cfg.Audit.Retention <= 0:
		return errors.New("audit prune: no retention is configured (audit.retention: 0 keeps every record); give -before DATE")
	}
	svc, st, err := newService(ctx, cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return err
	}
	defer st.Close()
	n, err := st.PruneAudit(ctx, before, audit.Record{Time: now, Agent: cliAgent, Source: svc.Installation()})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pruned %d records older than %s (the prune is recorded)\n", n, before.Format(time.RFC3339))
	return auditVerify(ctx, cfg, stdout)
}

// clientCreate registers a client whose key kapfhir generates into the
// data directory (for clinic IT and the walk-through: no JWT tooling
// needed; `kapfhir token -client ID` then finds the key).
func clientCreate(ctx context.Context, cfg config.Config, log *slog.Logger, id, role, scope string, stdout io.Writer) error {
	return withAccess(ctx, cfg, log, func(acc *access.Service) error {
		path, err := acc.CreateKeyClient(ctx, id, id, auth.Role(role), strings.Fields(scope), cliAgent)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "registered client %q (role %s, scopes %s); its private key is %s (mode 0600)\n", id, role, scope, path)
		return nil
	})
}

// cliAgent is who the command line acts as in audit records: an operator
// with the data directory and the database in hand.
var cliAgent = audit.Agent{ClientID: "cli", Role: "admin"}

// withAccess runs fn with the authorization server on the configured store
// (for the commands that change clients or keys), closing the store after.
func withAccess(ctx context.Context, cfg config.Config, log *slog.Logger, fn func(acc *access.Service) error) error {
	svc, st, err := newService(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	acc, _, err := openAccess(ctx, cfg, st, issuerOf(cfg, cfg.Listen), svc, log)
	if err != nil {
		return err
	}
	return fn(acc)
}
