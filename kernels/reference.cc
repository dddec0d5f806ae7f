// float64 reference of docs/MATH.md.
#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace zlpr::reference {
namespace {

bool Included(const Row& row, int64_t i) {
  return (row.mask == nullptr || row.mask[i] != 0) &&
         row.s[i] != -std::numeric_limits<double>::infinity();
}

// LSE({0} ∪ values).
double Lse(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, x);
  double sum = std::exp(-m);
  for (double x : v) sum += std::exp(x - m);
  return m + std::log(sum);
}

void Terms(const Row& row, double* p, double* n) {
  std::vector<double> xs, ys;
  for (int64_t i = 0; i < row.cols; ++i) {
    if (!Included(row, i)) continue;
    if (row.t[i] > 0) xs.push_back(-row.s[i] + std::log(row.t[i]));
    if (row.t[i] < 1) ys.push_back(row.s[i] + std::log1p(-row.t[i]));
  }
  *p = Lse(xs);
  *n = Lse(ys);
}

}  // namespace

double Loss(const Row& row) {
  double p, n;
  Terms(row, &p, &n);
  return p + n;
}

void Grad(const Row& row, double* grad) {
  double p, n;
  Terms(row, &p, &n);
  for (int64_t i = 0; i < row.cols; ++i) {
    grad[i] = 0;
    if (!Included(row, i)) continue;
    if (row.t[i] > 0) grad[i] -= std::exp(-row.s[i] + std::log(row.t[i]) - p);
    if (row.t[i] < 1) grad[i] += std::exp(row.s[i] + std::log1p(-row.t[i]) - n);
  }
}

double Prob(double s) { return 1.0 / (1.0 + std::exp(-2.0 * s)); }

std::vector<int32_t> Labels(const LabelRow& row, const LabelOptions& o) {
  auto included = [&](int64_t i) {
    return (row.mask == nullptr || row.mask[i] != 0) &&
           row.s[i] != -std::numeric_limits<double>::infinity();
  };
  auto before = [&](int32_t a, int32_t b) {
    return row.s[a] > row.s[b] || (row.s[a] == row.s[b] && a < b);
  };
  std::vector<int32_t> selected, rest;
  for (int64_t i = 0; i < row.cols; ++i) {
    if (!included(i)) continue;
    const double theta = o.label_thresholds != nullptr ? o.label_thresholds[i] : o.threshold;
    // p > θ, i.e. s > ½·logit(θ), decided exactly with long double.
    const long double z = 0.5L * std::log(static_cast<long double>(theta) / (1.0L - theta));
    (static_cast<long double>(row.s[i]) > z ? selected : rest).push_back(static_cast<int32_t>(i));
  }
  std::sort(selected.begin(), selected.end(), before);
  if (o.top_k > 0 && selected.size() > o.top_k) {
    rest.insert(rest.end(), selected.begin() + o.top_k, selected.end());
    selected.resize(o.top_k);
  }
  if (selected.size() < o.min_labels) {
    std::sort(rest.begin(), rest.end(), before);
    const size_t need = std::min<size_t>(o.min_labels - selected.size(), rest.size());
    selected.insert(selected.end(), rest.begin(), rest.begin() + need);
  }
  return selected;
}

}  // namespace zlpr::reference
