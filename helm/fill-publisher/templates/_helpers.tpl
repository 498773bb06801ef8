{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "fill-publisher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release-chart unless the release name already holds the chart name. */}}
{{- define "fill-publisher.fullname" -}}
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

{{- define "fill-publisher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fill-publisher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard app.kubernetes.io labels for every object. */}}
{{- define "fill-publisher.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fill-publisher.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: publisher
app.kubernetes.io/part-of: fill-publisher
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The scrape job of this release's publisher: what the ServiceMonitor sets and the alert rules select. */}}
{{- define "fill-publisher.job" -}}
{{- default (include "fill-publisher.fullname" .) .Values.prometheusRule.job -}}
{{- end -}}

{{/* files/alerts.yml scoped to this release: its job and namespace, and for kube-state-metrics'
     series its namespace and the Deployment's pods (<fullname>-<replicaset hash>-<suffix>). */}}
{{- define "fill-publisher.alertRules" -}}
{{- $job := printf "job=%q, namespace=%q" (include "fill-publisher.job" .) .Release.Namespace -}}
{{- $pods := printf "container=\"fill-publisher\", namespace=%q, pod=~%q" .Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]+" (include "fill-publisher.fullname" .)) -}}
{{- .Files.Get "files/alerts.yml" | replace "job=\"fill-publisher\"" $job | replace "container=\"fill-publisher\"" $pods -}}
{{- end -}}

{{- define "fill-publisher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fill-publisher.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fill-publisher.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The port the process serves /metrics, /healthz and /readyz on (config http.port). */}}
{{- define "fill-publisher.httpPort" -}}
{{- $http := .Values.config.http | default dict -}}
{{- $http.port | default 9108 -}}
{{- end -}}

{{/* The config file, checked for what the process would reject anyway, so a bad release fails
     at install time instead of in a crash loop; its `cluster:` section comes from the `cluster`
     values (only with more than one shard: one shard is the config's default). */}}
{{- define "fill-publisher.config" -}}
{{- include "fill-publisher.checkCluster" . -}}
{{- $cfg := deepCopy .Values.config -}}
{{- if not $cfg.kafka.bootstrap_servers -}}
{{- fail "config.kafka.bootstrap_servers is required (e.g. \"kafka-0.kafka:9092\")" -}}
{{- end -}}
{{- if not $cfg.sources -}}
{{- fail "config.sources must list at least one source (see values.yaml for a Kalshi and a ZLL example)" -}}
{{- end -}}
{{- $names := dict -}}
{{- range $cfg.sources -}}
{{- if hasKey $names .name -}}
{{- fail (printf "config.sources: source name %q is used twice; names must be unique" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- end -}}
{{- $cluster := .Values.cluster -}}
{{- if include "fill-publisher.sharded" . -}}
{{- $section := dict "shards" (int $cluster.shards) "session_timeout_s" $cluster.sessionTimeoutSeconds -}}
{{- with $cluster.groupId -}}
{{- $_ := set $section "group_id" . -}}
{{- end -}}
{{- $_ := set $cfg "cluster" $section -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* "true" with cluster.shards > 1 (a consumer group shares the shards), else empty. */}}
{{- define "fill-publisher.sharded" -}}
{{- if gt (int .Values.cluster.shards) 1 -}}true{{- end -}}
{{- end -}}

{{/* What several replicas need, refused with the reason rather than left to fence each other:
     the Deployment's replicas and update strategy follow cluster.shards, so the config's cluster
     section may come from nowhere else. */}}
{{- define "fill-publisher.checkCluster" -}}
{{- $cluster := .Values.cluster -}}
{{- $shards := int $cluster.shards -}}
{{- if hasKey .Values.config "cluster" -}}
{{- fail "config.cluster: the chart writes the config's cluster section from the cluster values (cluster.shards, cluster.groupId, cluster.sessionTimeoutSeconds, cluster.staticMembership); set those instead" -}}
{{- end -}}
{{- range .Values.env -}}
{{- if hasPrefix "FILLPUB_CLUSTER__" .name -}}
{{- fail (printf "env: %s would override the config's cluster section, which the Deployment's replicas and update strategy follow; set the cluster values instead (cluster.shards, cluster.groupId, cluster.sessionTimeoutSeconds, cluster.staticMembership)" .name) -}}
{{- end -}}
{{- end -}}
{{- if eq $shards 1 -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount is %d but cluster.shards is 1: a second instance of one shard fences the first, which exits 3. Set cluster.shards above 1 to share the sources between replicas (docs/running-several-instances.md), or replicaCount: 1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if eq .Values.strategy.type "RollingUpdate" -}}
{{- fail "strategy.type RollingUpdate needs cluster.shards > 1: with one shard the new pod fences the old one; leave strategy.type empty (Recreate)" -}}
{{- end -}}
{{- if or $cluster.groupId $cluster.staticMembership -}}
{{- fail "cluster.groupId and cluster.staticMembership configure the consumer group that shares the shards, and cluster.shards is 1: one shard runs without a group" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Deployment's update strategy: Recreate with one shard, RollingUpdate with more (unless
     strategy.type says otherwise). */}}
{{- define "fill-publisher.strategy" -}}
{{- $type := .Values.strategy.type | default (eq (include "fill-publisher.sharded" .) "true" | ternary "RollingUpdate" "Recreate") -}}
type: {{ $type }}
{{- if eq $type "RollingUpdate" }}
{{- $rolling := .Values.strategy.rollingUpdate | default dict }}
{{- if and (has (toString $rolling.maxSurge) (list "0" "0%")) (has (toString $rolling.maxUnavailable) (list "0" "0%")) }}
{{- fail "strategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0 (the rollout could never replace a pod)" }}
{{- end }}
rollingUpdate:
  {{- toYaml $rolling | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pod's affinity: `affinity` as given, else the podAntiAffinity preset spreading the
     replicas over podAntiAffinityTopologyKey (only with more than one replica). */}}
{{- define "fill-publisher.affinity" -}}
{{- if .Values.affinity -}}
{{- toYaml .Values.affinity -}}
{{- else if and .Values.podAntiAffinity (gt (int .Values.replicaCount) 1) -}}
{{- $term := dict "topologyKey" .Values.podAntiAffinityTopologyKey "labelSelector" (dict "matchLabels" (include "fill-publisher.selectorLabels" . | fromYaml)) -}}
podAntiAffinity:
{{- if eq .Values.podAntiAffinity "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list $term) | nindent 4 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list (dict "weight" 100 "podAffinityTerm" $term)) | nindent 4 }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* topologySpreadConstraints, an entry without labelSelector selecting this release's pods. */}}
{{- define "fill-publisher.topologySpreadConstraints" -}}
{{- $selector := dict "matchLabels" (include "fill-publisher.selectorLabels" . | fromYaml) -}}
{{- $constraints := list -}}
{{- range .Values.topologySpreadConstraints -}}
{{- $constraints = append $constraints (hasKey . "labelSelector" | ternary . (merge (dict "labelSelector" $selector) .)) -}}
{{- end -}}
{{- toYaml $constraints -}}
{{- end -}}

{{/* The NetworkPolicy egress rules of a pod that reads the venues and Kafka (the publisher's,
     and the audit CronJob's): DNS, the Kafka brokers, the venues' REST APIs, extraEgress. */}}
{{- define "fill-publisher.egress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.dns.enabled }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
# Kafka brokers
- ports:
    {{- range $np.kafka.ports }}
    {{- if kindIs "map" . }}
    - port: {{ .port }}
      {{- with .endPort }}
      endPort: {{ . }}
      {{- end }}
      protocol: TCP
    {{- else }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
    {{- end }}
  {{- with $np.kafka.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# venues' REST APIs (Kalshi, ZLL)
- ports:
    {{- range $np.venues.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.venues.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The audit CronJob's pods: selectable on their own, never by the publisher's selector. */}}
{{- define "fill-publisher.auditSelectorLabels" -}}
app.kubernetes.io/name: {{ include "fill-publisher.name" . }}-audit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fill-publisher.auditLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fill-publisher.auditSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: audit
app.kubernetes.io/part-of: fill-publisher
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
