"""What the services tell about themselves: Prometheus metrics (`metrics`) and OpenTelemetry traces
(`telemetry`)."""
