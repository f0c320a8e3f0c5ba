{{/* The pod spec of a Ray head or worker: KubeRay supplies the `ray start` command; the pod gets the
model services' settings, the model repository (delivered by an init container), a memory-backed
/dev/shm and a writable /tmp. */}}
{{- define "maas.rayPod" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "maas.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
initContainers:
  {{- include "maas.modelInit" (dict "root" $root "image" .image "pullPolicy" .pullPolicy) | nindent 2 }}
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
      - {name: grpc, containerPort: 9000}
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
      {{- range $service := .ray }}
      {{- $values := index $root.Values $service }}
      {{- $prefix := printf "MAAS_%s_" (upper $service) }}
      {{- range $key, $value := $values.settings }}
      - name: {{ printf "%s%s" $prefix (upper $key) }}
        value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ toJson $value | quote }}{{ end }}
      {{- end }}
      {{- end }}
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
volumes:
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $root.Values.ray.shmSize }}
  - name: tmp
    emptyDir: {}
  {{- include "maas.modelVolume" $root | nindent 2 }}
{{- end -}}
