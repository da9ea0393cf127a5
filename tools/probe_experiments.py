"""Label-free probe experiments on cached backbone features, in numpy: a
quick way to try an idea on all three leave-one-drive-out folds before
building it in Rust (`causeseg protocol` is what every reported number of
the README rests on; this prototype's own whitened k-means gives 22.1 / 53.9
against the protocol's 22.3 / 54.4, so compare its rows with each other).

Needs the 448x336 feature cache that `causeseg protocol` fills
(~/.cache/causeseg/features/<sha>-448x336-stretch) and ../shared/data/camvid;
reads both by path. Python packages: numpy scipy pillow (scikit-learn for
`gmm`).

    python3 tools/probe_experiments.py "run(wkm_fast)" "run(spectral, mode='mean')"

Each `run(variant, **settings)` fits on two drives and measures on the
third, seeds 0-2, and prints mIoU / pixel accuracy (mean ± sd over seeds of
the fold mean) and each fold's mean.
"""
# ---- data, metrics (Hungarian-matched mIoU, pixel accuracy at label size), spherical k-means ----
import numpy as np, glob, os, sys
from PIL import Image
from scipy.optimize import linear_sum_assignment
D=os.path.join(os.path.dirname(__file__),'..','..','shared','data','camvid')
FE=glob.glob(os.path.expanduser(os.environ.get('CAUSESEG_CACHE','~/.cache/causeseg'))+'/features/*-448x336-stretch')[0]
stems=sorted([os.path.splitext(f)[0] for s in ('train','val') for f in os.listdir(f'{D}/{s}/images')])
split={os.path.splitext(f)[0]:s for s in ('train','val') for f in os.listdir(f'{D}/{s}/images')}
files={}
for f in os.listdir(FE):
    st=f.rsplit('-',1)[0]; files.setdefault(st,f)
CACHE=os.path.join(os.environ.get('TMPDIR','/tmp'),'causeseg-probe-experiments.npz')
def load():
    if os.path.exists(CACHE):
        z=np.load(CACHE); return z['F'],z['L'],z['I']
    F=np.stack([np.load(f'{FE}/{files[s]}') for s in stems])
    L=np.stack([np.array(Image.open(f'{D}/{split[s]}/labels/{s}.png')) for s in stems])
    I=np.stack([np.array(Image.open(f'{D}/{split[s]}/images/{s}.jpg').convert('RGB')) for s in stems])
    np.savez(CACHE,F=F,L=L,I=I); return F,L,I
F,L,I=load()  # F [N,24,32,384], L [N,360,480]
drives=np.array([s.split('_')[0] for s in stems])
def interp(n_out,n_in):
    # align_corners=False bilinear
    M=np.zeros((n_out,n_in),np.float32)
    for o in range(n_out):
        x=(o+0.5)*n_in/n_out-0.5; x=min(max(x,0),n_in-1); x0=int(np.floor(x)); x1=min(x0+1,n_in-1); w=x-x0
        M[o,x0]+=1-w; M[o,x1]+=w
    return M
Ur,Uc=interp(360,24),interp(480,32)
def upsample(S):  # S [24,32,K] -> [360,480,K]
    return np.einsum('ri,ijk,cj->rck',Ur,S,Uc,optimize=True)
def evaluate(scores,labels,K=11,C=11,ign=11):
    conf=np.zeros((K,C),np.int64)
    for S,lab in zip(scores,labels):
        pred=upsample(S).argmax(-1); m=lab!=ign
        conf+=np.bincount(pred[m]*C+lab[m],minlength=K*C).reshape(K,C)
    r,c=linear_sum_assignment(-conf)
    perm=dict(zip(r,c)); M=np.zeros((C,C),np.int64)
    for k in range(K): M[perm[k]]+=conf[k]
    tp=np.diag(M); iou=tp/np.maximum(M.sum(0)+M.sum(1)-tp,1)
    present=(M.sum(0)+M.sum(1))>0
    return 100*iou[present].mean(),100*tp.sum()/M.sum(),100*iou
def whiten_fit(X,d=64):
    mu=X.mean(0); C=np.cov((X-mu).T); w,V=np.linalg.eigh(C); o=np.argsort(w)[::-1][:d]
    return mu, V[:,o]/np.sqrt(w[o])
def unit(X): return X/np.maximum(np.linalg.norm(X,axis=-1,keepdims=True),1e-8)
def skmeans(X,k,seed,iters=100,restarts=3):
    rng=np.random.default_rng(seed); best=None
    for r in range(restarts):
        # kmeans++ on cosine distance
        idx=[rng.integers(len(X))]; d=1-X@X[idx[0]]
        for _ in range(k-1):
            p=np.maximum(d,0)**2; p/=p.sum(); i=rng.choice(len(X),p=p); idx.append(i); d=np.minimum(d,1-X@X[i])
        Cn=X[idx].copy()
        for it in range(iters):
            s=X@Cn.T; a=s.argmax(1)
            new=np.stack([X[a==j].sum(0) if (a==j).any() else Cn[j] for j in range(k)]); new=unit(new)
            if np.allclose(new,Cn,atol=1e-6): break
            Cn=new
        obj=(X@Cn.T).max(1).sum()
        if best is None or obj>best[0]: best=(obj,Cn)
    return best[1]

# ---- the protocol loop and the whitened k-means baseline (all training tokens) ----
import time
def run(variant, seeds=(0,1,2), folds=('0001TP','0006R0','0016E5'), **kw):
    res={}
    for dv in folds:
        tr=drives!=dv; te=~tr
        for seed in seeds:
            m,a,_=variant(tr,te,seed,**kw); res[(dv,seed)]=(m,a)
    per_seed=[np.mean([res[(d,s)] for d in folds],0) for s in seeds]
    ps=np.array(per_seed)
    fold=' '.join(f"{d}:{np.mean([res[(d,s)][0] for s in seeds]):.1f}/{np.mean([res[(d,s)][1] for s in seeds]):.1f}" for d in folds)
    print(f"{variant.__name__} {kw}: {ps[:,0].mean():.1f}±{ps[:,0].std(ddof=min(1,len(ps)-1)):.1f} / {ps[:,1].mean():.1f}±{ps[:,1].std(ddof=min(1,len(ps)-1)):.1f}  [{fold}]",flush=True)
    return res
def wkm(tr,te,seed,d=64):
    X=F[tr].reshape(-1,384); mu,P=whiten_fit(X,d)
    Z=unit((X-mu)@P); C=skmeans(Z,11,seed)
    S=unit((F[te]-mu)@P)@C.T
    return evaluate(S,L[te])

# ---- wkm_fast: the baseline on 150k sampled tokens; smooth: 3x3 token smoothing; posprior: + lam * log p(concept | row) from the training assignments; posfeat: the row appended as a feature ----
F=F.astype(np.float32)
rows=np.broadcast_to(np.arange(24)[None,:,None],(1,24,32))
def prep(tr,d=64,smooth=0):
    G=F
    if smooth:
        from scipy.ndimage import uniform_filter
        G=uniform_filter(F,size=(1,3,3,1),mode='nearest')*smooth+F*(1-smooth)
    X=G[tr].reshape(-1,384); mu,P=whiten_fit(X,d)
    return unit((G-mu)@P)
def sub(Z,seed,n=150000):
    rng=np.random.default_rng(1000+seed); return Z[rng.choice(len(Z),min(n,len(Z)),replace=False)]
def wkm_fast(tr,te,seed,smooth=0):
    Z=prep(tr,smooth=smooth); C=skmeans(sub(Z[tr].reshape(-1,64),seed),11,seed)
    return evaluate(Z[te]@C.T,L[te])
def posprior(tr,te,seed,lam=1.0,T=0.1):
    Z=prep(tr); C=skmeans(sub(Z[tr].reshape(-1,64),seed),11,seed)
    a=(Z[tr]@C.T).argmax(-1)  # [n,24,32]
    cnt=np.stack([(a==k).sum((0,2)) for k in range(11)],-1)+1.0  # [24,11]
    logp=np.log(cnt/cnt.sum(1,keepdims=True))
    S=(Z[te]@C.T)/T+lam*logp[None,:,None,:]
    return evaluate(S,L[te])
def posfeat(tr,te,seed,w=1.0):
    Z=prep(tr); y=np.broadcast_to(((np.arange(24)-11.5)/11.5)[None,:,None,None],Z.shape[:3]+(1,))*w
    Zp=unit(np.concatenate([Z,y],-1)); C=skmeans(sub(Zp[tr].reshape(-1,65),seed),11,seed)
    return evaluate(Zp[te]@C.T,L[te])

# ---- temper: k-means on `micro` micro-cluster centroids weighted by size**alpha (alpha 0: density-free) ----
def wskmeans(X,w,k,seed,iters=100,restarts=5):
    rng=np.random.default_rng(seed); best=None
    for r in range(restarts):
        idx=[rng.choice(len(X),p=w/w.sum())]; d=1-X@X[idx[0]]
        for _ in range(k-1):
            p=w*np.maximum(d,0)**2; p/=p.sum(); i=rng.choice(len(X),p=p); idx.append(i); d=np.minimum(d,1-X@X[i])
        Cn=X[idx].copy()
        for it in range(iters):
            a=(X@Cn.T).argmax(1)
            new=unit(np.stack([(w[a==j,None]*X[a==j]).sum(0) if (a==j).any() else Cn[j] for j in range(k)]))
            if np.allclose(new,Cn,atol=1e-7): break
            Cn=new
        obj=(w*(X@Cn.T).max(1)).sum()
        if best is None or obj>best[0]: best=(obj,Cn)
    return best[1]
def temper(tr,te,seed,micro=100,alpha=0.0):
    Z=prep(tr); X=sub(Z[tr].reshape(-1,64),seed)
    M=skmeans(X,micro,seed,iters=30,restarts=1)
    cnt=np.bincount((X@M.T).argmax(1),minlength=micro).astype(float)
    keep=cnt>0; M=M[keep]; cnt=cnt[keep]
    C=wskmeans(M,cnt**alpha,11,seed)
    return evaluate(Z[te]@C.T,L[te])

# ---- spectral: spectral clustering of 300 micro-centroids on a kNN graph; concepts = max over members or weighted mean ----
def spectral(tr,te,seed,micro=300,knn=10,mode='max'):
    Z=prep(tr); X=sub(Z[tr].reshape(-1,64),seed)
    M=skmeans(X,micro,seed,iters=30,restarts=1)
    a=(X@M.T).argmax(1); cnt=np.bincount(a,minlength=micro); M=M[cnt>0]; n=len(M)
    S=M@M.T; np.fill_diagonal(S,-np.inf)
    A=np.zeros((n,n)); nn=np.argsort(-S,1)[:,:knn]
    for i in range(n): A[i,nn[i]]=1
    A=np.maximum(A,A.T); d=A.sum(1); Lsym=np.eye(n)-A/np.sqrt(np.outer(d,d))
    w,V=np.linalg.eigh(Lsym); E=unit(V[:,:11])
    g=skmeans(E,11,seed,restarts=10); lab=(E@g.T).argmax(1)
    T=Z[te]@M.T  # [n_img,24,32,n]
    if mode=='max':
        Sc=np.stack([T[...,lab==k].max(-1) if (lab==k).any() else np.full(T.shape[:-1],-9.) for k in range(11)],-1)
    else:
        C=unit(np.stack([M[lab==k].sum(0) if (lab==k).any() else np.zeros(64) for k in range(11)])); Sc=Z[te]@C.T
    return evaluate(Sc,L[te])

# ---- posdeb: the top r directions of the per-position mean token projected out (or a share of the per-position mean subtracted) ----
def posdeb(tr,te,seed,r=4,full=False):
    Pm=F[tr].mean(0).reshape(-1,384)  # per-position mean [768,384]
    G=F
    if full:
        G=F-F[tr].mean(0)[None]*full
    else:
        U,s,Vt=np.linalg.svd(Pm-Pm.mean(0),full_matrices=False); V=Vt[:r].T
        G=F-(F@V)@V.T
    X=G[tr].reshape(-1,384); mu,P=whiten_fit(X,64); Z=unit((G-mu)@P)
    C=skmeans(sub(Z[tr].reshape(-1,64),seed),11,seed)
    return evaluate(Z[te]@C.T,L[te])

# ---- cooc: 33 fine clusters merged to 11 by how often they share a per-image segment ----
def cooc(tr,te,seed,fine=33,seg=6,mode='max'):
    Z=prep(tr); X=sub(Z[tr].reshape(-1,64),seed)
    M=skmeans(X,fine,seed,iters=50,restarts=2); n=len(M)
    A=np.zeros((n,n))
    rng=np.random.default_rng(seed)
    for img in Z[tr]:
        T=img.reshape(-1,64); f=(T@M.T).argmax(1)
        S=skmeans(T,seg,int(rng.integers(1e9)),iters=20,restarts=1); s=(T@S.T).argmax(1)
        H=np.zeros((seg,n)); np.add.at(H,(s,f),1)
        H=H/np.maximum(H.sum(1,keepdims=True),1)
        A+=H.T@H*1.0
    cnt=np.bincount((X@M.T).argmax(1),minlength=n)+1
    A=A/np.sqrt(np.outer(np.diag(A),np.diag(A))+1e-9); np.fill_diagonal(A,0)
    # average-linkage agglomeration on affinity
    groups=[[i] for i in range(n)]
    while len(groups)>11:
        best=None
        for i in range(len(groups)):
            for j in range(i+1,len(groups)):
                v=A[np.ix_(groups[i],groups[j])].mean()
                if best is None or v>best[0]: best=(v,i,j)
        _,i,j=best; groups[i]+=groups[j]; del groups[j]
    lab=np.zeros(n,int)
    for k,g in enumerate(groups): lab[g]=k
    T=Z[te]@M.T
    if mode=='max': Sc=np.stack([T[...,lab==k].max(-1) for k in range(11)],-1)
    else:
        C=unit(np.stack([(M[lab==k]*cnt[lab==k,None]).sum(0) for k in range(11)])); Sc=Z[te]@C.T
    return evaluate(Sc,L[te])

# ---- gmm: Gaussian mixture (sklearn) on 60k whitened tokens, EM from the k-means clusters; scored by its posterior ('posterior', quadratic) or by cosine to the mean direction of the tokens each component wins ('directions', what `--probe gaussian-mixture` does) ----
def gmm(tr,te,seed,cov='full',mode='posterior',n=60000,iters=100,reg=1e-3):
    from sklearn.mixture import GaussianMixture
    Z=prep(tr); X=sub(Z[tr].reshape(-1,64),seed,n); C=skmeans(X,11,seed)
    gm=GaussianMixture(11,covariance_type=cov,max_iter=iters,random_state=seed,reg_covar=reg,means_init=C*(X@C.T).max(1).mean()).fit(X)
    if mode=='posterior':
        return evaluate(gm._estimate_weighted_log_prob(Z[te].reshape(-1,64)).reshape(Z[te].shape[:3]+(11,)),L[te])
    a=gm.predict(X); D=unit(np.stack([X[a==k].sum(0) if (a==k).any() else C[k] for k in range(11)]))
    return evaluate(Z[te]@D.T,L[te])

# ---- segkm: Felzenszwalb graph segmentation of every training image's whitened token grid (8-neighbours, edge weight 1 - cos), then spherical k-means on the segments' mean tokens weighted by size**alpha ----
def felz(T,k=1.0,min_size=4):
    H,W,_=T.shape; yy,xx=np.mgrid[0:H,0:W]; E=[]
    for dy,dx in [(0,1),(1,0),(1,1),(1,-1)]:
        m=(yy+dy<H)&(xx+dx>=0)&(xx+dx<W); E.append(np.stack([(yy*W+xx)[m],((yy+dy)*W+xx+dx)[m]],1))
    E=np.concatenate(E); X=T.reshape(-1,T.shape[-1]); w=1-(X[E[:,0]]*X[E[:,1]]).sum(1)
    par=np.arange(H*W); size=np.ones(H*W); inner=np.zeros(H*W)
    def find(i):
        while par[i]!=i: par[i]=par[par[i]]; i=par[i]
        return i
    def join(a,b,t):
        if size[a]<size[b]: a,b=b,a
        par[b]=a; size[a]+=size[b]; inner[a]=t
    order=np.argsort(w,kind='stable')
    for e in order:
        a,b=find(E[e,0]),find(E[e,1])
        if a!=b and w[e]<=min(inner[a]+k/size[a],inner[b]+k/size[b]): join(a,b,w[e])
    for e in order:
        a,b=find(E[e,0]),find(E[e,1])
        if a!=b and min(size[a],size[b])<min_size: join(a,b,max(inner[a],inner[b]))
    return np.unique([find(i) for i in range(H*W)],return_inverse=True)[1]
def segkm(tr,te,seed,k=4.0,min_size=8,alpha=0.5):
    Z=prep(tr); means=[]; sizes=[]
    for T in Z[tr]:
        lab=felz(T,k,min_size); X=T.reshape(-1,64)
        for s_ in range(lab.max()+1): means.append(X[lab==s_].sum(0)); sizes.append((lab==s_).sum())
    C=wskmeans(unit(np.array(means)),np.array(sizes,float)**alpha,11,seed)
    return evaluate(Z[te]@C.T,L[te])

# ---- crops: CAUSE's five crops (the cache that `protocol --five-crop` fills) in the whitening and/or the k-means sample ----
CROPS=None
def crop_features():
    global CROPS
    if CROPS is None:
        root=os.path.dirname(os.path.dirname(FE)); views=[]
        for i in range(5):
            d=glob.glob(f'{root}/crop{i}/features/*-448x336-stretch')[0]; fs={}
            for f in os.listdir(d): fs.setdefault(f.rsplit('-',1)[0],f)
            views.append(np.stack([np.load(f'{d}/{fs[s]}') for s in stems]).astype(np.float32))
        CROPS=np.stack(views,1)  # [N,5,24,32,384]
    return CROPS
def wkm_crops(tr,te,seed,whiten_crops=True,kmeans_crops=True,n=150000):
    Cr=crop_features()[tr].reshape(-1,384); X=F[tr].reshape(-1,384)
    mu,P=whiten_fit(np.concatenate([X,Cr]) if whiten_crops else X,64)
    pool=np.concatenate([X,Cr]) if kmeans_crops else X
    Z=unit((sub(pool,seed,n)-mu)@P); C=skmeans(Z,11,seed)
    return evaluate(unit((F[te]-mu)@P)@C.T,L[te])

# ---- imgcenter: subtract alpha x each image's (or crop's) mean token before the whitening, to take out a drive's light and colour cast ----
def imgcenter(tr,te,seed,alpha=1.0,whiten_crops=True,n=150000):
    G=F-alpha*F.mean((1,2),keepdims=True)
    X=G[tr].reshape(-1,384)
    if whiten_crops:
        Cr=crop_features()[tr]; Cr=(Cr-alpha*Cr.mean((2,3),keepdims=True)).reshape(-1,384)
        mu,P=whiten_fit(np.concatenate([X,Cr]),64)
    else: mu,P=whiten_fit(X,64)
    Z=unit((sub(X,seed,n)-mu)@P); C=skmeans(Z,11,seed)
    return evaluate(unit((G[te]-mu)@P)@C.T,L[te])

if __name__=="__main__":
    import sys
    for expr in sys.argv[1:]: eval(expr)
