"""Admission: what stands between an authorized request and its handler.

- `plan`: the question a request asks (scopes, digest, cache lifetime), computed without I/O;
- `waits`: rate-limit answers waited out in place or turned into `Deferred`, and their notices;
- `run`: the run stage (claim, cache, single-flight, limits, handler, finish), returning an
  `Answer` or the job ledger's `Claim`;
- `metered`: the text provider a request's handler calls, admitting each call after the first.

The Redis side of every question (the scripts, degraded mode) is store/admission.py.
"""
