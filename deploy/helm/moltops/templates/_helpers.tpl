{{/*
Names, labels and the few values derived from several others. The container ports are the
server's fixed listeners; deploy/Dockerfile EXPOSEs the same two (scripts/check-helm checks it).
*/}}

{{- define "moltops.httpPort" -}}7337{{- end -}}
{{- define "moltops.grpcPort" -}}7338{{- end -}}
{{- define "moltops.configDir" -}}/etc/moltops{{- end -}}
{{- define "moltops.tlsDir" -}}/etc/moltops/tls{{- end -}}

{{- define "moltops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moltops.fullname" -}}
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

{{/* The gRPC Service's name: the full name with a suffix, within 63 characters. */}}
{{- define "moltops.grpcServiceName" -}}
{{- printf "%s-grpc" (include "moltops.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}

{{- define "moltops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moltops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moltops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object but the component. */}}
{{- define "moltops.commonLabels" -}}
helm.sh/chart: {{ include "moltops.chart" . }}
{{ include "moltops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: moltops
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "moltops.labels" -}}
{{ include "moltops.commonLabels" . }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "moltops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "moltops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "moltops.image" -}}
{{- $repository := required "image.repository is required: no moltops image is published; build deploy/Dockerfile, push it to your registry and set image.repository" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* http or https: what the server speaks on :7337, so probes and the Service follow it. */}}
{{- define "moltops.httpScheme" -}}
{{- if .Values.server.httpTls.enabled -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/* A listen address "host:port", with brackets for an IPv6 host. */}}
{{- define "moltops.listen" -}}
{{- $host := .host -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" $host .port -}}
{{- else -}}
{{- printf "%s:%v" $host .port -}}
{{- end -}}
{{- end -}}

{{/* The names in the agent port's certificate: as given, else the host of grpc.advertise. */}}
{{- define "moltops.grpcServerNames" -}}
{{- if .Values.server.grpc.serverNames -}}
{{- toJson .Values.server.grpc.serverNames -}}
{{- else -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.server.grpc.advertise "" | trimPrefix "[" | trimSuffix "]" -}}
{{- toJson (list $host) -}}
{{- end -}}
{{- end -}}

{{/* The replica count the PDB protects: the HPA's floor when it scales the Deployment. */}}
{{- define "moltops.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* The environment variable the server reads an OIDC provider's client secret from. */}}
{{- define "moltops.oidcSecretEnv" -}}
{{- printf "MOLTOPS_OIDC_%s_CLIENT_SECRET" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/*
Cross-field rules the schema cannot say with a useful message. Included by the Deployment, so a
bad combination fails `helm install`/`helm template` before anything is applied.
*/}}
{{- define "moltops.validate" -}}
{{- if not .Values.server.httpTls.enabled -}}
{{- fail "server.httpTls.enabled=false: moltops-server refuses to serve the REST API on a non-loopback address without TLS, and a pod must listen on one; set server.httpTls.existingSecret to a kubernetes.io/tls Secret instead" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (ge (int .Values.podDisruptionBudget.minAvailable) (int (include "moltops.minReplicas" .))) (ge (int (include "moltops.minReplicas" .)) 2) -}}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below the replica count (%v), or no pod could ever be evicted" .Values.podDisruptionBudget.minAvailable (include "moltops.minReplicas" .)) -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) -}}
{{- fail "ingress.enabled=true needs at least one entry in ingress.hosts" -}}
{{- end -}}
{{- $names := dict -}}
{{- range .Values.server.oidc -}}
{{- if hasKey $names .name -}}
{{- fail (printf "server.oidc: provider %q is configured twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- end -}}
{{- end -}}
