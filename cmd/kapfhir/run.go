package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/adapter"
	"github.com/kapfhir/kapfhir/api"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/catalogue"
	"github.com/kapfhir/kapfhir/config"
	"github.com/kapfhir/kapfhir/fhir"
	"github.com/kapfhir/kapfhir/server"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/postgres"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/throttle"
	"github.com/kapfhir/kapfhir/treatment"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

const usage = `kapfhir maps ketamine and KAP clinic programmes to FHIR R4 and serves them.

Usage:
  kapfhir serve     [-config FILE]   run the server (FHIR at /fhir, domain API at /api/v1)
  kapfhir migrate   [-config FILE]   apply database migrations and exit
  kapfhir demo      [-config FILE]   enrol synthetic patients in every protocol and print the schedules
  kapfhir protocols [-config FILE]   list the protocol catalogue
  kapfhir config check [-config FILE]  validate the configuration, reporting every problem
  kapfhir endpoints list [-config FILE]        list the EHR endpoints
  kapfhir endpoints test ID [-config FILE]     test an endpoint: metadata, SMART, token, write strategy
  kapfhir sync backfill -endpoint ID            queue everything for an endpoint and send it (progress, ETA)
  kapfhir sync reconcile -endpoint ID [-repair] compare the EHR with what kapfhir sent
  kapfhir token [-client ID] [-key FILE] [-url URL] [-scope S]  get an access token (default: the admin client)
  kapfhir clients create ID -role ROLE [-scope S]  register a client with a key generated into the data directory
  kapfhir keys rotate|list [-config FILE]      rotate kapfhir's token-signing key, or list the keys
  kapfhir audit verify [-config FILE]          check the audit trail's hash chain
  kapfhir audit prune [-before DATE]           delete records older than audit.retention (or DATE), recorded
  kapfhir version

With no -config, KAPFHIR_CONFIG names the file; with neither, defaults apply
(data in ./kapfhir-data, listening on 127.0.0.1:8080). KAPFHIR_* variables override the file.
`

// env is how run reads the environment (os.LookupEnv in main; a map in tests).
type env = config.LookupFunc

func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookup env) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	if cmd == "config" {
		if len(rest) == 0 || rest[0] != "check" {
			fmt.Fprint(stderr, usage)
			return errors.New(`unknown command: "config" takes "check"`)
		}
		cmd, rest = "config check", rest[1:]
	}
	var sub string
	if (cmd == "endpoints" || cmd == "sync" || cmd == "audit" || cmd == "clients" || cmd == "keys") && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		sub, rest = rest[0], rest[1:]
	}
	var clientArg string
	if cmd == "clients" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		clientArg, rest = rest[0], rest[1:] // clients create ID [flags]
	}
	fs := flag.NewFlagSet("kapfhir "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "path to a YAML configuration file")
	endpointID := fs.String("endpoint", "", "endpoint id (sync commands)")
	repair := fs.Bool("repair", false, "queue missing and drifted resources again (sync reconcile)")
	clientID := fs.String("client", "admin", "client id (token)")
	role := fs.String("role", "", "the client's role: ehr, clinic, admin or auditor (clients create)")
	keyFile := fs.String("key", "", "the client's private key, PKCS#8 PEM (token; default: the admin key in the data directory)")
	baseURL := fs.String("url", "", "kapfhir's base URL (token; default: baseURL, else http(s)://listen)")
	scope := fs.String("scope", "system/*.rs", "scopes to ask for (token)")
	before := fs.String("before", "", "prune records older than this date or RFC 3339 time (audit prune; default: now - audit.retention)")
	switch cmd {
	case "serve", "migrate", "demo", "protocols", "config check", "endpoints", "sync", "token", "clients":
	case "keys":
		if sub != "rotate" && sub != "list" {
			return errors.New("usage: kapfhir keys rotate | kapfhir keys list")
		}
	case "audit":
		if sub != "verify" && sub != "prune" {
			return errors.New("usage: kapfhir audit verify | kapfhir audit prune [-before DATE]")
		}
	case "version":
		fmt.Fprintln(stdout, "kapfhir", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	var extra []string
	if cmd == "endpoints" {
		extra = fs.Args() // endpoints test ID
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", cmd, fs.Args())
	}
	if cmd == "sync" && (sub != "backfill" && sub != "reconcile" || *endpointID == "") {
		return errors.New("usage: kapfhir sync backfill -endpoint ID | kapfhir sync reconcile -endpoint ID [-repair]")
	}
	path := *cfgPath
	if path == "" {
		path, _ = lookup("KAPFHIR_CONFIG")
	}
	cfg, err := config.Load(path, lookup)
	if cmd == "config check" {
		if err != nil {
			return err
		}
		if _, err := catalogue.Load(cfg.Protocols.Dir); err != nil {
			return fmt.Errorf("protocols: %w", err)
		}
		fmt.Fprintln(stdout, "configuration OK")
		fmt.Fprint(stdout, cfg.Dump())
		return nil
	}
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	switch cmd {
	case "protocols":
		return listProtocols(cfg, stdout)
	case "migrate":
		st, n, err := openStore(ctx, cfg)
		if err != nil {
			return err
		}
		defer st.Close()
		fmt.Fprintf(stdout, "migrations applied: %d\n", n)
		return nil
	case "demo":
		return demo(ctx, cfg, log, stdout)
	case "endpoints":
		return endpointsCmd(ctx, cfg, log, append([]string{sub}, extra...), stdout)
	case "sync":
		return syncCmd(ctx, cfg, log, sub, *endpointID, *repair, stdout)
	case "clients":
		if sub != "create" || clientArg == "" {
			return errors.New("usage: kapfhir clients create ID -role ROLE [-scope S]")
		}
		return clientCreate(ctx, cfg, log, clientArg, *role, *scope, stdout)
	case "keys":
		return keysCmd(ctx, cfg, log, sub, stdout)
	case "token":
		return tokenCmd(ctx, cfg, *clientID, *keyFile, *baseURL, *scope, stdout)
	case "audit":
		if sub == "prune" {
			return auditPrune(ctx, cfg, *before, stdout)
		}
		return auditVerify(ctx, cfg, stdout)
	}
	return serve(ctx, cfg, log, stdout)
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// migrator is what both store implementations offer besides store.Store.
type migrator interface {
	store.Store
	Migrate(ctx context.Context) (int, error)
}

// openStore opens the configured store and applies pending migrations.
func openStore(ctx context.Context, cfg config.Config) (store.Store, int, error) {
	var st migrator
	var err error
	switch cfg.Store.Driver {
	case "postgres":
		st, err = postgres.Open(ctx, cfg.Store.PostgresURL)
	default:
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, 0, fmt.Errorf("data directory: %w", err)
		}
		st, err = sqlite.Open(ctx, cfg.SQLitePath())
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open %s store: %w", cfg.Store.Driver, err)
	}
	n, err := st.Migrate(ctx)
	if err != nil {
		st.Close()
		return nil, 0, fmt.Errorf("migrate %s store: %w", cfg.Store.Driver, err)
	}
	return st, n, nil
}

// newService loads the catalogue and opens the store and application service.
// notify, when set, is called after each change that enqueued sync work.
func newService(ctx context.Context, cfg config.Config, log *slog.Logger, notify func()) (*app.Service, store.Store, error) {
	cat, err := catalogue.Load(cfg.Protocols.Dir)
	if err != nil {
		return nil, nil, fmt.Errorf("protocol catalogue: %w", err)
	}
	cal, err := cfg.Calendar()
	if err != nil {
		return nil, nil, err
	}
	box, err := openSeal(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	st, n, err := openStore(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if n > 0 {
		log.Info("migrations applied", "count", n)
	}
	svc, err := app.New(ctx, app.Options{
		Store: st, Catalogue: cat, Calendar: cal,
		IdentifierSystem: cfg.FHIR.IdentifierSystem, CanonicalBase: cfg.FHIR.CanonicalBase,
		Logger: log, Notify: notify, Seal: box,
	})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return svc, st, nil
}

// newManager returns the sync manager for the store (not started).
func newManager(cfg config.Config, svc *app.Service, st store.Store, log *slog.Logger) *adapter.Manager {
	roots, err := cfg.Outbound.RootCAs()
	if err != nil { // validated at load: the file changed since
		log.Error("EHR certificates are verified against the system's authorities only", "error", err)
	}
	return adapter.New(adapter.Options{
		Store: st, IdentifierSystem: svc.IdentifierSystem(), Source: svc.Installation(), Configured: cfg.Endpoints, Sessions: svc,
		Logger: log, UserAgent: "kapfhir/" + version, LeaseFor: cfg.Sync.LeaseFor, Poll: cfg.Sync.Poll,
		Seal: svc.Seal(), RootCAs: roots,
	})
}

func serve(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	// Listen first, so a taken port fails before anything else starts.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	scheme := "http"
	if cfg.TLS.Enabled() {
		tc, err := serverTLS(cfg.TLS, log)
		if err != nil {
			return err
		}
		ln, scheme = tls.NewListener(ln, tc), "https"
	}
	svc, st, mgr, err := openSync(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer st.Close() // the store closes last
	if err := mgr.Start(ctx); err != nil {
		return err
	}
	defer mgr.Stop() // workers stop before the store closes
	if cfg.Audit.Retention > 0 {
		// Pruned once before serving, then every pruneEvery.
		r := audit.Retention{Store: st, Period: cfg.Audit.Retention, Source: svc.Installation(), Now: time.Now, Log: log}
		r.PruneLogged(ctx)
		stopPruner := background(ctx, func(ctx context.Context) {
			t := time.NewTimer(cfg.Audit.PruneEvery)
			defer t.Stop()
			select {
			case <-ctx.Done():
			case <-t.C:
				r.Run(ctx, cfg.Audit.PruneEvery)
			}
		})
		defer stopPruner() // so does the audit pruner
	}
	fhirBase := ""
	if cfg.BaseURL != "" {
		fhirBase = strings.TrimSuffix(cfg.BaseURL, "/") + "/fhir"
	}
	addr := ln.Addr().String()
	tokenURL := issuerOf(cfg, addr) + "/auth/token"
	fs, err := fhir.New(st, fhir.Options{BaseURL: fhirBase, Software: "kapfhir " + version, Audit: true, TokenURL: tokenURL})
	if err != nil {
		return err
	}
	fs.WithAudit(st)
	acc, note, err := openAccess(ctx, cfg, st, issuerOf(cfg, addr), svc, log)
	if err != nil {
		return err
	}
	stopKeys := background(ctx, acc.Run) // picks up keys other processes rotate
	defer stopKeys()
	var th server.Throttle
	if cfg.Auth.RatePerSecond > 0 {
		th = throttle.New(cfg.Auth.RatePerSecond, max(cfg.Auth.RateBurst, 1), time.Now)
	}
	h := server.New(server.Options{
		FHIR: fs, API: api.New(svc, fhirBase).WithSync(mgr).WithClients(acc).WithAudit(st), Logger: log, MaxBodyBytes: cfg.HTTP.MaxBodyBytes,
		Access: acc, Audit: st, Throttle: th, Source: svc.Installation(),
		Ready: func(ctx context.Context) error {
			_, err := st.Patient(ctx, "readiness-probe")
			return ignoreNotFound(err)
		},
	})
	log.Info("kapfhir listening", "addr", addr, "scheme", scheme, "store", cfg.Store.Driver, "version", version)
	// One write: a reader of the first line is not made to read the note
	// before the server serves.
	fmt.Fprintf(stdout, "kapfhir listening on %s://%s (FHIR base %s://%s/fhir)\n%s", scheme, addr, scheme, addr, note)
	return server.Serve(ctx, ln, h, server.Timeouts{
		ReadHeader: cfg.HTTP.ReadHeaderTimeout, Read: cfg.HTTP.ReadTimeout, Write: cfg.HTTP.WriteTimeout,
		Idle: cfg.HTTP.IdleTimeout, Shutdown: cfg.HTTP.ShutdownTimeout,
	}, log)
}

// background runs work until ctx is done or the returned function is
// called; that function waits for work to return.
func background(ctx context.Context, work func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		work(ctx)
	}()
	return func() { cancel(); <-done }
}

func listProtocols(cfg config.Config, w io.Writer) error {
	cat, err := catalogue.Load(cfg.Protocols.Dir)
	if err != nil {
		return fmt.Errorf("protocol catalogue: %w", err)
	}
	tw := newTable(w, "ID", "KIND", "ROUTE", "DOSES", "INDICATIONS", "TITLE")
	for _, p := range cat.All() {
		var ind []string
		for _, i := range p.Indications {
			ind = append(ind, string(i))
		}
		doses := fmt.Sprintf("%d-%d", p.Doses.Min, p.Doses.Max)
		if p.Doses.Min == p.Doses.Max {
			doses = fmt.Sprint(p.Doses.Min)
		}
		tw.row(p.ID, string(p.Kind), string(p.Route), doses, strings.Join(ind, ","), p.Title)
	}
	return tw.flush()
}

func ignoreNotFound(err error) error {
	if treatment.ErrorKind(err) == treatment.KindNotFound {
		return nil
	}
	return err
}
