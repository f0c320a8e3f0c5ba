{{/* Model delivery (modelRepository): how a pod that reads the model repository gets it. */}}

{{/* Where the model-repository image holds its repository, and where its install writes the copy. */}}
{{- define "maas.modelSourcePath" -}}/opt/maas/model_repository{{- end -}}
{{- define "maas.modelInstallPath" -}}/mnt/model-repository{{- end -}}

{{/* The init container of a pod that reads the model repository. Source `image`: the model-repository
image copies its repository into the pod's `models` emptyDir, checking every file's SHA-256. Source `pvc`:
the pod's own image (`image`, `pullPolicy`) waits for the marker the Job writes last. Call with
(dict "root" $ "image" "<the pod's image>" "pullPolicy" "<its pull policy>"). */}}
{{- define "maas.modelInit" -}}
{{- $repository := .root.Values.modelRepository -}}
- name: model-repository
  {{- if eq $repository.source "image" }}
  image: {{ include "maas.modelRepositoryImage" .root }}
  imagePullPolicy: {{ $repository.image.pullPolicy | default .root.Values.image.pullPolicy }}
  command: [maas]
  args: [models, install, {{ include "maas.modelSourcePath" . }}, {{ include "maas.modelInstallPath" . }}]
  {{- else }}
  image: {{ .image }}
  imagePullPolicy: {{ .pullPolicy }}
  command: [maas]
  args:
    - models
    - wait
    - {{ $repository.path }}
    - --marker
    - {{ include "maas.modelRepositoryImage" .root | quote }}
    - --timeout
    - {{ $repository.waitTimeoutSeconds | quote }}
  {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
  resources:
    {{- toYaml $repository.installResources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if eq $repository.source "image" }}
    - name: models
      mountPath: {{ include "maas.modelInstallPath" . }}
    {{- else }}
    - name: models
      mountPath: {{ $repository.path }}
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The service container's read-only mount of the model repository. */}}
{{- define "maas.modelMount" -}}
- name: models
  mountPath: {{ .Values.modelRepository.path }}
  readOnly: true
{{- end -}}

{{/* The `models` volume: the pod's own emptyDir (source `image`) or the shared claim, read-only (`pvc`). */}}
{{- define "maas.modelVolume" -}}
- name: models
  {{- if eq .Values.modelRepository.source "image" }}
  emptyDir:
    sizeLimit: {{ .Values.modelRepository.sizeLimit }}
  {{- else }}
  persistentVolumeClaim:
    claimName: {{ include "maas.modelClaim" . }}
    readOnly: true
  {{- end }}
{{- end -}}
