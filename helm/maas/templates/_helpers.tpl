{{/* The services of the chart: maas's own, from files/services.yaml (generated from the services'
specs by `maas generate`), and every top-level values block naming a `model` (a model served by
`maas serve`), each with its port, env prefix, v2 models, whether it runs torch, and (user models) its class. */}}
{{- define "maas.services" -}}
{{- $services := .Files.Get "files/services.yaml" | fromYaml -}}
{{- range $name, $block := .Values -}}
{{- if and (kindIs "map" $block) (hasKey $block "model") -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$" $name) -}}
{{- fail (printf "%s: a model's values key is its Kubernetes name: lowercase letters, digits and '-'" $name) -}}
{{- end -}}
{{- $prefix := printf "MAAS_%s_" ($name | upper | replace "-" "_") -}}
{{- $_ := set $services $name (dict "port" $block.port "prefix" $prefix "models" (list $name) "torch" true "model" $block.model) -}}
{{- end -}}
{{- end -}}
{{- toYaml $services -}}
{{- end -}}

{{- define "maas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one service's resources: <fullname>-<service>. Call with (dict "root" $ "service" "vision"). */}}
{{- define "maas.component.fullname" -}}
{{- printf "%s-%s" (include "maas.fullname" .root) .service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "maas.labels" -}}
helm.sh/chart: {{ include "maas.chart" . }}
app.kubernetes.io/name: {{ include "maas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: maas
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. Call with (dict "root" $ "service" "vision"). */}}
{{- define "maas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* All labels of one component's resources. */}}
{{- define "maas.componentLabels" -}}
{{ include "maas.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "maas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "maas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A service's image reference: registry/repository then @digest or :tag. */}}
{{- define "maas.image" -}}
{{- $image := .values.image -}}
{{- $registry := $image.registry | default .root.Values.global.imageRegistry | default .root.Values.image.registry -}}
{{- $ref := printf "%s/%s" $registry $image.repository | trimPrefix "/" -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref ($image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The drain grace a service runs with: its settings' drain_grace_seconds, else the code's default (10). */}}
{{- define "maas.drainGrace" -}}
{{- $settings := .values.settings | default dict -}}
{{- if hasKey $settings "drain_grace_seconds" -}}{{ index $settings "drain_grace_seconds" }}{{- else -}}10{{- end -}}
{{- end -}}

{{/* Headless Service DNS name of a service, for the gateway's dns:/// targets. */}}
{{- define "maas.serviceHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "maas.component.fullname" .) .root.Release.Namespace -}}
{{- end -}}

{{/* Name of the model repository claim. */}}
{{- define "maas.modelClaim" -}}
{{- .Values.modelRepository.pvc.existingClaim | default (printf "%s-models" (include "maas.fullname" .)) -}}
{{- end -}}

{{/* The model services (those running torch), as a list. */}}
{{- define "maas.modelServices" -}}
{{- $torch := list -}}
{{- range $service, $contract := include "maas.services" . | fromYaml -}}
{{- if $contract.torch -}}
{{- $torch = append $torch $service -}}
{{- end -}}
{{- end -}}
{{- toJson $torch -}}
{{- end -}}

{{/* The model services whose runtime is `rayservice`, as a list. */}}
{{- define "maas.rayServices" -}}
{{- $ray := list -}}
{{- range $service := include "maas.modelServices" . | fromJsonArray -}}
{{- $values := index $.Values $service -}}
{{- if and $values.enabled (eq $values.runtime "rayservice") -}}
{{- $ray = append $ray $service -}}
{{- end -}}
{{- end -}}
{{- toJson $ray -}}
{{- end -}}

{{/* DNS name of the Serve service (Serve's gRPC proxy on every Ray node). */}}
{{- define "maas.rayServeHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "maas.component.fullname" (dict "root" . "service" "ray-serve")) .Release.Namespace -}}
{{- end -}}
