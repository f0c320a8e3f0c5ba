{{/* The gateway's routing file: a dns:/// target per enabled model service (its headless Service, so
the gateway's round_robin spreads calls over every pod; under `rayservice`, Serve's gRPC proxy with the
service's `application` metadata, in plaintext under TLS since that proxy serves none) and the models each one serves, with gateway.routes merged in (a
route with a `split` names its targets itself). */}}
{{- define "maas.routing" -}}
{{- $targets := dict -}}
{{- $models := dict -}}
{{- range $service, $contract := include "maas.services" . | fromYaml -}}
{{- $values := index $.Values $service -}}
{{- if and (ne $service "gateway") $values.enabled -}}
{{- if eq $values.runtime "rayservice" -}}
{{- $target := dict "address" (printf "dns:///%s:9000" (include "maas.rayServeHost" $)) "metadata" (dict "application" $service) -}}
{{- if $.Values.tls.enabled -}}
{{- $_ := set $target "plaintext" true -}}
{{- end -}}
{{- $_ := set $targets $service $target -}}
{{- else -}}
{{- $host := include "maas.serviceHost" (dict "root" $ "service" $service) -}}
{{- $_ := set $targets $service (dict "address" (printf "dns:///%s:%v" $host $contract.port)) -}}
{{- end -}}
{{- range $model := $contract.models -}}
{{- $route := deepCopy (index $.Values.gateway.routes $model | default dict) -}}
{{- if not (hasKey $route "split") -}}
{{- $_ := set $route "target" $service -}}
{{- end -}}
{{- $_ := set $models $model $route -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $model, $route := .Values.gateway.routes -}}
{{- if not (hasKey $models $model) -}}
{{- fail (printf "gateway.routes.%s: no enabled service serves model %s" $model $model) -}}
{{- end -}}
{{- range $backend := $route.split | default list -}}
{{- if not (hasKey $targets $backend.target) -}}
{{- fail (printf "gateway.routes.%s.split: target %s is not an enabled service (one of %s)" $model $backend.target (keys $targets | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "targets" $targets "models" $models) -}}
{{- end -}}
