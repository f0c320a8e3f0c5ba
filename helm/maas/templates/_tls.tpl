{{/* TLS: the Secret a service serves its certificate from, the gateway's client certificate, and the
plaintext health-only port kubelet's probes use under TLS. */}}
{{- define "maas.tls.secret" -}}
{{- printf "%s-tls" (include "maas.component.fullname" .) -}}
{{- end -}}

{{- define "maas.tls.healthPort" -}}
{{- add .port .root.Values.tls.healthPortOffset -}}
{{- end -}}

{{/* Environment of a service under TLS: its certificate, the client CA it checks callers against, its
health port; for the gateway also the client certificate it dials the services with. */}}
{{- define "maas.tls.env" -}}
{{- $tls := .root.Values.tls -}}
{{- $prefix := .contract.prefix -}}
- name: {{ $prefix }}TLS_CERT_FILE
  value: /etc/maas/tls/tls.crt
- name: {{ $prefix }}TLS_KEY_FILE
  value: /etc/maas/tls/tls.key
- name: {{ $prefix }}HEALTH_PORT
  value: {{ include "maas.tls.healthPort" (dict "root" .root "port" .contract.port) | quote }}
{{- if eq .service "gateway" }}
{{- if $tls.clientCASecret }}
- name: MAAS_GATEWAY_TLS_CLIENT_CA_FILE
  value: /etc/maas/client-ca/ca.crt
{{- end }}
- name: MAAS_GATEWAY_DOWNSTREAM_TLS_CA_FILE
  value: /etc/maas/client-tls/ca.crt
- name: MAAS_GATEWAY_DOWNSTREAM_TLS_CERT_FILE
  value: /etc/maas/client-tls/tls.crt
- name: MAAS_GATEWAY_DOWNSTREAM_TLS_KEY_FILE
  value: /etc/maas/client-tls/tls.key
{{- else if $tls.requireGatewayCertificate }}
- name: {{ $prefix }}TLS_CLIENT_CA_FILE
  value: /etc/maas/tls/ca.crt
{{- end }}
{{- end -}}

{{/* Volume mounts and volumes of a service under TLS (call with the same dict as maas.tls.env). */}}
{{- define "maas.tls.mounts" -}}
- name: tls
  mountPath: /etc/maas/tls
  readOnly: true
{{- if eq .service "gateway" }}
- name: client-tls
  mountPath: /etc/maas/client-tls
  readOnly: true
{{- if .root.Values.tls.clientCASecret }}
- name: client-ca
  mountPath: /etc/maas/client-ca
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "maas.tls.volumes" -}}
- name: tls
  secret:
    secretName: {{ include "maas.tls.secret" (dict "root" .root "service" .service) }}
    defaultMode: 0440
{{- if eq .service "gateway" }}
- name: client-tls
  secret:
    secretName: {{ include "maas.tls.secret" (dict "root" .root "service" "gateway-client") }}
    defaultMode: 0440
{{- with .root.Values.tls.clientCASecret }}
- name: client-ca
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end -}}

{{/* The replica count the gateway divides each API key's rate limit by (see gateway.auth.rateLimitReplicas). */}}
{{- define "maas.rateLimitReplicas" -}}
{{- $gateway := .Values.gateway -}}
{{- if $gateway.auth.rateLimitReplicas -}}{{ $gateway.auth.rateLimitReplicas }}
{{- else if $gateway.autoscaling.enabled -}}{{ $gateway.autoscaling.maxReplicas }}
{{- else -}}{{ $gateway.replicaCount }}
{{- end -}}
{{- end -}}
