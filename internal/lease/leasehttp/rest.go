package leasehttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
)

// maxPoolBody bounds a PUT /api/v1/pools/{name} body.
const maxPoolBody = 4 << 20

func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/pools", s.listPools)
	mux.HandleFunc("GET /api/v1/pools/{name}", s.getPool)
	mux.HandleFunc("PUT /api/v1/pools/{name}", s.putPool)
	mux.HandleFunc("DELETE /api/v1/pools/{name}", s.deletePool)
	mux.HandleFunc("POST /api/v1/pools/{name}/resources/{id}/disable", s.setDisabled(true))
	mux.HandleFunc("POST /api/v1/pools/{name}/resources/{id}/enable", s.setDisabled(false))
	mux.HandleFunc("GET /api/v1/leases", s.listLeases)
	mux.HandleFunc("GET /api/v1/leases/history", s.history)
	mux.HandleFunc("DELETE /api/v1/leases/{id}", s.revoke)
}

// apiError is the JSON body of every error answer.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers a REST request with err: through Options.WriteError
// when the embedding server gives one, so that inside forge server every
// endpoint answers alike, else with the status of forge.HTTPStatus.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if s.opts.WriteError != nil {
		s.opts.WriteError(w, r, err)
		return
	}
	code := forge.ErrorCode(err)
	msg := forge.ErrorMessage(err)
	if code == forge.EINTERNAL {
		msg = "internal error" // the detail is for logs, not for clients
	}
	writeJSON(w, forge.HTTPStatus(err), apiError{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

// poolsResponse is the answer of GET /api/v1/pools.
type poolsResponse struct {
	Pools []*lease.PoolState `json:"pools"`
}

func (s *Server) listPools(w http.ResponseWriter, r *http.Request) {
	pools, err := s.m.Pools(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, poolsResponse{Pools: pools})
}

func (s *Server) getPool(w http.ResponseWriter, r *http.Request) {
	p, err := s.m.Pool(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) putPool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, err := lease.DecodePool(name, http.MaxBytesReader(w, r.Body, maxPoolBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			err = forge.Errorf(forge.ETOOLARGE, "pool body over %d bytes", maxPoolBody)
		}
		s.writeError(w, r, err)
		return
	}
	created, err := s.m.PutPool(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.m.Pool(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, st)
}

func (s *Server) deletePool(w http.ResponseWriter, r *http.Request) {
	if err := s.m.DeletePool(r.Context(), r.PathValue("name")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setDisabled(disabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name, id := r.PathValue("name"), r.PathValue("id")
		reason, err := readReason(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := s.m.SetDisabled(r.Context(), name, id, disabled, reason); err != nil {
			s.writeError(w, r, err)
			return
		}
		p, err := s.m.Pool(r.Context(), name)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		for _, res := range p.Resources {
			if res.ID == id {
				writeJSON(w, http.StatusOK, res)
				return
			}
		}
		s.writeError(w, r, forge.Errorf(forge.ENOTFOUND, "pool %q has no resource %q", name, id))
	}
}

// leasesResponse is the answer of GET /api/v1/leases.
type leasesResponse struct {
	Leases []*lease.LeaseState `json:"leases"`
}

func (s *Server) listLeases(w http.ResponseWriter, r *http.Request) {
	ls, err := s.m.Leases(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, leasesResponse{Leases: ls})
}

// historyResponse is the answer of GET /api/v1/leases/history.
type historyResponse struct {
	History []*lease.HistoryEntry `json:"history"`
}

func (s *Server) history(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			s.writeError(w, r, forge.Errorf(forge.EINVALID, "limit %q: want a positive integer", v))
			return
		}
		limit = n
	}
	h, err := s.m.History(r.Context(), limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, historyResponse{History: h})
}

// reasonRequest is the optional body of DELETE /api/v1/leases/{id} and
// POST …/disable.
type reasonRequest struct {
	Reason string `json:"reason"`
}

// readReason reads the optional {"reason": "..."} body of r, trimmed.
func readReason(w http.ResponseWriter, r *http.Request) (string, error) {
	if r.ContentLength == 0 {
		return "", nil
	}
	var body reasonRequest
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8192)).Decode(&body)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", forge.Errorf(forge.EINVALID, "body must be {\"reason\":\"...\"}: %v", err)
	}
	return strings.TrimSpace(body.Reason), nil
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	reason := "forced release by operator"
	why, err := readReason(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if why != "" {
		reason = fmt.Sprintf("forced release by operator: %s", why)
	}
	if err := s.m.Revoke(r.Context(), r.PathValue("id"), reason); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
