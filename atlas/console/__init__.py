"""The web console (`atlas console`): agents, traces, jobs and versions in a browser, with
rollback and retrain buttons that publish what the CLI publishes. See ``app`` for the
guarantees (credentials, host check, CSRF) and ``server`` for how it runs."""
