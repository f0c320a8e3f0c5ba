{{/* Environment of a service container: bind address, contract ports, repository, logs, tracing, settings;
     then what its settings leave unnamed: the connection age (grpcConnections), the gateway's DNS
     re-resolution interval, `cuda` for a model service given GPUs (an image without CUDA then fails at
     start instead of computing on the CPU), and torch threads following the CPU request. */}}
{{- define "maas.env" -}}
{{- $prefix := .contract.prefix -}}
- name: {{ $prefix }}HOST
  value: "0.0.0.0"
- name: {{ $prefix }}PORT
  value: {{ .contract.port | quote }}
- name: {{ $prefix }}METRICS_PORT
  value: {{ add .contract.port 1000 | quote }}
- name: MAAS_MODEL_REPOSITORY
  value: {{ .root.Values.modelRepository.path | quote }}
- name: MAAS_LOG_FORMAT
  value: {{ .root.Values.logFormat | quote }}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: HF_HUB_OFFLINE
  value: "1"
{{- if eq .service "gateway" }}
- name: MAAS_GATEWAY_ROUTING_FILE
  value: /etc/maas/routing/routing.yaml
- name: MAAS_GATEWAY_HTTP_ENABLED
  value: {{ .values.http.enabled | quote }}
- name: MAAS_GATEWAY_HTTP_PORT
  value: {{ include "maas.gatewayHttpPort" .root | quote }}
{{- if .values.auth.enabled }}
- name: MAAS_GATEWAY_API_KEYS_FILE
  value: /etc/maas/auth/api-keys.yaml
{{- if not (hasKey (.values.settings | default dict) "rate_limit_replicas") }}
- name: MAAS_GATEWAY_RATE_LIMIT_REPLICAS
  value: {{ include "maas.rateLimitReplicas" .root | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if .root.Values.tls.enabled }}
{{ include "maas.tls.env" . }}
{{- end }}
{{- with .root.Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "maas-%s" $.service | quote }}
{{- end }}
{{- range $key, $value := .values.settings }}
- name: {{ printf "%s%s" $prefix (upper $key) }}
  value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ toJson $value | quote }}{{ end }}
{{- end }}
{{- $settings := .values.settings | default dict }}
{{- $connections := .root.Values.grpcConnections }}
{{- if not (hasKey $settings "max_connection_age_s") }}
- name: {{ $prefix }}MAX_CONNECTION_AGE_S
  value: {{ $connections.maxAgeSeconds | quote }}
{{- end }}
{{- if not (hasKey $settings "max_connection_age_grace_s") }}
- name: {{ $prefix }}MAX_CONNECTION_AGE_GRACE_S
  value: {{ $connections.maxAgeGraceSeconds | quote }}
{{- end }}
{{- if and (eq .service "gateway") (not (hasKey $settings "dns_min_resolution_interval_s")) }}
- name: {{ $prefix }}DNS_MIN_RESOLUTION_INTERVAL_S
  value: {{ $connections.minResolutionIntervalSeconds | quote }}
{{- end }}
{{- $cpu := dig "requests" "cpu" "" (.values.resources | default dict) }}
{{- $model := .contract.torch }}
{{- if and $model .values.gpu (not (hasKey $settings "device")) }}
- name: {{ $prefix }}DEVICE
  value: cuda
{{- end }}
{{- if and $model $cpu (not (hasKey $settings "num_threads")) }}
- name: {{ $prefix }}NUM_THREADS
  valueFrom:
    resourceFieldRef:
      containerName: {{ .service }}
      resource: requests.cpu
      divisor: "1"
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Native gRPC startup, readiness and liveness probes on `port`: the service's gRPC port, or under TLS
its plaintext health-only port (kubelet's gRPC probes cannot speak TLS). */}}
{{- define "maas.probes" -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{- $probe := index $.probes $kind }}
{{- if $probe.enabled }}
{{ $kind }}Probe:
  grpc:
    port: {{ $.port }}
  periodSeconds: {{ $probe.periodSeconds }}
  timeoutSeconds: {{ $probe.timeoutSeconds }}
  failureThreshold: {{ $probe.failureThreshold }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Container resources, with `gpu` NVIDIA GPUs added to the limits (Kubernetes sets requests equal). */}}
{{- define "maas.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if .gpu -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpu) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}
