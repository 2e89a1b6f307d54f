{{/* Prefix of this chart's object names. */}}
{{- define "fedshield-silo.fullname" -}}
{{ printf "%s-silo" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedshield-silo.siloName" -}}
{{ .Values.silo.name | default .Release.Name }}
{{- end }}

{{- define "fedshield-silo.labels" -}}
app.kubernetes.io/name: fedshield-silo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
fedshield.io/silo: {{ include "fedshield-silo.siloName" . }}
{{- end }}

{{- define "fedshield-silo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "fedshield-silo.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name }}
{{- end -}}
{{- end }}

{{- define "fedshield-silo.keySecret" -}}
{{ .Values.ckks.existingSecret | default .Values.ckks.secretName }}
{{- end }}

{{- define "fedshield-silo.claimName" -}}
{{ .Values.dataset.existingClaim | default .Values.dataset.claimName }}
{{- end }}

{{/* The silo's entry of FederatedFinetune spec.silos (fields of SiloSpec in fedshield/api/models.py). */}}
{{- define "fedshield-silo.entry" -}}
{{- $dataset := dict "claimName" (include "fedshield-silo.claimName" .) -}}
{{- with .Values.dataset.subPath }}{{ $_ := set $dataset "subPath" . }}{{ end -}}
{{- $entry := dict
    "name" (include "fedshield-silo.siloName" .)
    "namespace" .Release.Namespace
    "keySecret" (include "fedshield-silo.keySecret" .)
    "datasetVolume" $dataset
    "image" (printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "%s-cuda" .Chart.AppVersion)))
    "gpus" .Values.gpu.count
    "gpuResource" .Values.gpu.resource
    "cpu" .Values.resources.cpu
    "memory" .Values.resources.memory
    "stateSize" .Values.resources.stateSize -}}
{{- with .Values.gpu.nodeSelector }}{{ $_ := set $entry "nodeSelector" . }}{{ end -}}
{{- with .Values.gpu.tolerations }}{{ $_ := set $entry "tolerations" . }}{{ end -}}
{{- with .Values.gpu.runtimeClassName }}{{ $_ := set $entry "runtimeClassName" . }}{{ end -}}
{{- with .Values.gpu.priorityClassName }}{{ $_ := set $entry "priorityClassName" . }}{{ end -}}
{{- with (include "fedshield-silo.serviceAccountName" .) }}{{ $_ := set $entry "serviceAccountName" . }}{{ end -}}
{{- with .Values.tls.secretName }}{{ $_ := set $entry "tls" (dict "secretName" .) }}{{ end -}}
{{ toYaml (list $entry) }}
{{- end }}

{{/* Labels of a multi-node silo's rank pods (the operator's jobset.py): this silo's training pods. */}}
{{- define "fedshield-silo.rankLabels" -}}
app.kubernetes.io/name: fedshield
app.kubernetes.io/component: silo
fedshield.io/silo: {{ include "fedshield-silo.siloName" . }}
{{- end }}
