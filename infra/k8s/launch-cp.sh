#!/usr/bin/env bash
# cp.distributed.launch on Kubernetes: (re)creates the JobSet of infra/k8s/cp-jobset.yaml and waits until it ends;
# exits 0 when every node succeeded, 1 when one failed (the cp stage fails with it; run again, CP resumes).
# Environment: CHATGRAFT_IMAGE (the image), CHATGRAFT_PROJECT_CLAIM (the project's ReadWriteMany volume claim),
# CHATGRAFT_CP_NODES (default 2), and kubectl's own (KUBECONFIG, namespace).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export NODES=${CHATGRAFT_CP_NODES:-2} IMAGE=${CHATGRAFT_IMAGE:?set CHATGRAFT_IMAGE} \
       PROJECT_CLAIM=${CHATGRAFT_PROJECT_CLAIM:?set CHATGRAFT_PROJECT_CLAIM}
kubectl delete jobset chatgraft-cp --ignore-not-found --wait=true
envsubst '${NODES} ${IMAGE} ${PROJECT_CLAIM}' < "$here/cp-jobset.yaml" | kubectl apply -f -
trap 'kubectl delete jobset chatgraft-cp --ignore-not-found --wait=false' TERM INT  # a stopped stage stops its nodes
while true; do
  state=$(kubectl get jobset chatgraft-cp -o jsonpath='{.status.terminalState}')
  case "$state" in
    Completed) exit 0 ;;
    Failed) kubectl logs -l jobset.sigs.k8s.io/jobset-name=chatgraft-cp --tail=20 --prefix >&2 || true; exit 1 ;;
  esac
  sleep 10 & wait $!
done
