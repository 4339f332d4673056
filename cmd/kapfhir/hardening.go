package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/kapfhir/kapfhir/config"
	"github.com/kapfhir/kapfhir/seal"
)

// sealKeyFile is where kapfhir keeps the sealing key it generates, in the
// data directory, when none is configured.
const sealKeyFile = "seal.key"

// openSeal returns the Box that seals secrets kept in the store: with the
// configured key (secrets.keyFile or KAPFHIR_SEAL_KEY), else with the key
// kept in the data directory, generated there on first start.
func openSeal(cfg config.Config, log *slog.Logger) (*seal.Box, error) {
	key, err := cfg.Secrets.SealKey()
	if err != nil {
		return nil, err
	}
	if key == nil {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		path := filepath.Join(cfg.DataDir, sealKeyFile)
		var created bool
		if key, created, err = seal.LoadOrCreateKeyFile(path); err != nil {
			return nil, err
		}
		if created {
			log.Info("generated the key that seals secrets in the store; back it up, and better keep it apart from the database "+
				"(secrets.keyFile or KAPFHIR_SEAL_KEY; every process sharing a database needs the same key)",
				"file", path, "key", seal.KeyID(key))
		}
	}
	return seal.New(key)
}

// serverTLS is the HTTPS configuration: the configured certificate, TLS 1.2
// or later (Go's default cipher suites), HTTP/2 offered. The certificate is
// read again when its files change, so a renewal needs no restart.
func serverTLS(t config.TLS, log *slog.Logger) (*tls.Config, error) {
	c, err := newCertificate(t, log)
	if err != nil {
		return nil, fmt.Errorf("tls.certFile, tls.keyFile: %w", err)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.get,
		NextProtos:     []string{"h2", "http/1.1"},
	}, nil
}

// certificate is the server's certificate, loaded again at the first
// handshake after either file changes (renewal tools replace or rewrite
// them). A pair that does not load — half written, a key that does not
// match — is logged once and the previous certificate kept.
type certificate struct {
	t   config.TLS
	log *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	files   [2]os.FileInfo // of the pair last tried
	refused bool           // the pair last tried did not load
}

func newCertificate(t config.TLS, log *slog.Logger) (*certificate, error) {
	c := &certificate{t: t, log: log}
	files, err := c.stat()
	if err != nil {
		return nil, err
	}
	cert, err := t.Certificate()
	if err != nil {
		return nil, err
	}
	c.cert, c.files = &cert, files
	return c, nil
}

func (c *certificate) stat() ([2]os.FileInfo, error) {
	var fi [2]os.FileInfo
	for i, p := range []string{c.t.CertFile, c.t.KeyFile} {
		st, err := os.Stat(p)
		if err != nil {
			return fi, err
		}
		fi[i] = st
	}
	return fi, nil
}

// changed reports whether a file is not the one last tried (replaced,
// rewritten, resized).
func changed(was, is os.FileInfo) bool {
	return !os.SameFile(was, is) || !was.ModTime().Equal(is.ModTime()) || was.Size() != is.Size()
}

// get is tls.Config.GetCertificate.
func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	files, err := c.stat()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil || (!changed(c.files[0], files[0]) && !changed(c.files[1], files[1])) {
		return c.cert, nil // a file missing mid-renewal: keep serving
	}
	c.files = files
	cert, err := c.t.Certificate()
	if err != nil {
		if !c.refused {
			c.log.Error("the renewed TLS certificate does not load; still serving the previous one", "certFile", c.t.CertFile, "error", err)
		}
		c.refused = true
		return c.cert, nil
	}
	c.cert, c.refused = &cert, false
	c.log.Info("TLS certificate reloaded", "certFile", c.t.CertFile)
	return c.cert, nil
}
