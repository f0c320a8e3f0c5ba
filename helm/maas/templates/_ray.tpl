{{/* The pod spec of a Ray head or worker: KubeRay supplies the `ray start` command; the pod gets the
global settings, the model repository (delivered by an init container), a memory-backed /dev/shm and a
writable /tmp. The services' own settings travel in serveConfigV2 instead, so changing one never
replaces the Ray cluster. The head runs under its own ServiceAccount with its token mounted: KubeRay
injects the autoscaler beside the head container, and it calls the API server with that token. */}}
{{- define "maas.rayPod" -}}
{{- $root := .root -}}
{{- if .head }}
serviceAccountName: {{ include "maas.rayHeadServiceAccountName" $root }}
automountServiceAccountToken: true
{{- else }}
serviceAccountName: {{ include "maas.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- end }}
{{- with $root.Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- include "maas.scheduling" (dict "root" $root "values" .group "service" "ray") }}
initContainers:
  {{- include "maas.modelInit" (dict "root" $root "image" .image "pullPolicy" .pullPolicy) | nindent 2 }}
  {{- with .group.initContainers }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
containers:
  - name: {{ .name }}
    image: {{ .image }}
    imagePullPolicy: {{ .pullPolicy }}
    {{- if .head }}
    ports:
      - {name: gcs-server, containerPort: 6379}
      - {name: dashboard, containerPort: 8265}
      - {name: client, containerPort: 10001}
      - {name: serve, containerPort: 8000}
      - {name: serve-grpc, containerPort: 9000}
      - {name: metrics, containerPort: 8080}
    {{- else }}
    ports:
      - {name: metrics, containerPort: 8080}
    {{- end }}
    env:
      - name: MAAS_MODEL_REPOSITORY
        value: {{ $root.Values.modelRepository.path | quote }}
      - name: MAAS_LOG_FORMAT
        value: {{ $root.Values.logFormat | quote }}
      - name: HOME
        value: /tmp
      - name: HF_HUB_OFFLINE
        value: "1"
      - name: RAY_USAGE_STATS_ENABLED
        value: "0"
    resources:
      {{- toYaml .group.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      - name: shm
        mountPath: /dev/shm
      - name: tmp
        mountPath: /tmp
      {{- include "maas.modelMount" $root | nindent 6 }}
      {{- with .group.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  {{- with .group.sidecars }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumes:
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $root.Values.ray.shmSize }}
  - name: tmp
    emptyDir: {}
  {{- include "maas.modelVolume" $root | nindent 2 }}
  {{- with .group.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The Ray head's ServiceAccount. KubeRay binds its autoscaler Role to it, and shortens a name longer
than 50 characters (utils.CheckName), which would then name no ServiceAccount. */}}
{{- define "maas.rayHeadServiceAccountName" -}}
{{- $account := .Values.ray.head.serviceAccount -}}
{{- $name := "" -}}
{{- if $account.create -}}
{{- $name = $account.name | default (include "maas.component.fullname" (dict "root" . "service" "ray-head")) -}}
{{- else -}}
{{- $name = required "ray.head.serviceAccount.name: name the Ray head's ServiceAccount when the chart does not create it" $account.name -}}
{{- end -}}
{{- if gt (len $name) 50 -}}
{{- fail (printf "the Ray head's ServiceAccount name %q is longer than 50 characters, which KubeRay shortens; set ray.head.serviceAccount.name or fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}
