{{/* Name of the operator's objects. */}}
{{- define "fedshield-operator.fullname" -}}
{{ .Release.Name }}-operator
{{- end }}

{{/* Labels the operator's pod is selected by. */}}
{{- define "fedshield-operator.selectorLabels" -}}
app.kubernetes.io/name: fedshield-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of this chart. */}}
{{- define "fedshield-operator.labels" -}}
{{ include "fedshield-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "fedshield-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
