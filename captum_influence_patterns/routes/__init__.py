"""Reference routes: the comparison methods of docs/method.md, section 8.

- :mod:`.attention`: attention capture and the per-layer attention/rollout matrices;
- :mod:`.finders`: route search on those matrices (greedy, best, beam, rollout, flow)
  and the route orientation;
- :mod:`.conductance`: Captum's layer conductance and the route that follows it;
- :mod:`.contributions`: one decomposed pass per example and the contribution routes
  (ALTI, ALTI-Logit, attention-norm rollout, information flow routes);
- :mod:`.scoring`: routes as patterns, and the route scorer;
- :mod:`.compare`: the named routes (:data:`~.compare.ROUTES`) and
  :func:`~.compare.compare`;
- :mod:`.optimality`: the optimality test, each explained route against the routes of
  :mod:`.opponents` (random, attention-drawn, exhaustive, stay-then-jump) and the
  reference routes, recorded by :mod:`.optimality_records`.
"""
